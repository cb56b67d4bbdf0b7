//! controller

pub mod stream;
