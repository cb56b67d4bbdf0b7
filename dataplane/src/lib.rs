//! dataplane
pub mod balance;
pub mod device;
pub mod health;
