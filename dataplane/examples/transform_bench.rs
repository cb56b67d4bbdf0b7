//! Micro-benchmark of the JSON transform on a 20 KB catalogue body:
//! microseconds per body for remove and keep paths, plain, gzip and br,
//! against a serde_json parse + serialize of the same body as a yardstick.
//!
//! Run: `cargo run --release -p dataplane --example transform_bench`
//! (`bench/cache.py` runs it and records the numbers).

use dataplane::transform::{Coding, Trimmer};
use snapshot::model::JsonTransform;
use std::hint::black_box;
use std::io::Write;
use std::time::{Duration, Instant};

/// A catalogue of about `target` bytes, like a product list API.
pub fn catalogue(target: usize) -> String {
    let mut items = Vec::new();
    let mut i = 0;
    loop {
        items.push(serde_json::json!({
            "id": i,
            "sku": format!("SKU-{i:06}"),
            "name": format!("Product number {i}"),
            "price": {"amount": 1999 + i, "currency": "EUR"},
            "description": "A sturdy, well made product that does what it says on the tin.",
            "images": [format!("https://cdn.example/{i}/1.jpg"), format!("https://cdn.example/{i}/2.jpg")],
            "reviews": {"count": i * 3, "average": 4.5},
            "internal": {"warehouse": "B7", "margin": 0.31},
        }));
        i += 1;
        let text = serde_json::json!({"items": items, "page": {"n": 1, "size": i}}).to_string();
        if text.len() >= target {
            return text;
        }
    }
}

fn time_per_op(mut op: impl FnMut()) -> Duration {
    for _ in 0..200 {
        op();
    }
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let n = 2000;
        let started = Instant::now();
        for _ in 0..n {
            op();
        }
        best = best.min(started.elapsed() / n);
    }
    best
}

fn main() {
    let body = catalogue(20 * 1024);
    let remove = Trimmer::new(&JsonTransform {
        devices: vec![],
        remove: vec![
            "items[].description".into(),
            "items[].images".into(),
            "items[].reviews".into(),
            "items[].internal".into(),
        ],
        keep: vec![],
        max_body_bytes: 1 << 20,
    });
    let keep = Trimmer::new(&JsonTransform {
        devices: vec![],
        remove: vec![],
        keep: vec![
            "items[].id".into(),
            "items[].name".into(),
            "items[].price".into(),
            "page".into(),
        ],
        max_body_bytes: 1 << 20,
    });
    let trimmed = remove.apply(body.as_bytes()).unwrap_or_default();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    let _ = gz.write_all(body.as_bytes());
    let gz = gz.finish().unwrap_or_default();
    let mut br = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
        let _ = w.write_all(body.as_bytes());
    }

    println!(
        "# JSON transform on a {} byte body ({} items); trimmed to {} bytes",
        body.len(),
        body.matches("\"sku\"").count(),
        trimmed.len()
    );
    type Case<'a> = (&'static str, Box<dyn FnMut() + 'a>);
    let cases: [Case; 6] = [
        (
            "serde_json parse+serialize (yardstick)",
            Box::new(|| {
                let v: serde_json::Value =
                    serde_json::from_slice(black_box(body.as_bytes())).unwrap_or_default();
                black_box(serde_json::to_vec(&v).unwrap_or_default());
            }),
        ),
        (
            "remove 4 array paths",
            Box::new(|| {
                black_box(remove.apply(black_box(body.as_bytes())).unwrap_or_default());
            }),
        ),
        (
            "keep 4 paths",
            Box::new(|| {
                black_box(keep.apply(black_box(body.as_bytes())).unwrap_or_default());
            }),
        ),
        (
            "remove, gzip body (decode+encode)",
            Box::new(|| {
                black_box(
                    remove
                        .apply_encoded(black_box(&gz), Coding::Gzip)
                        .unwrap_or_default(),
                );
            }),
        ),
        (
            "remove, br body (decode+encode)",
            Box::new(|| {
                black_box(
                    remove
                        .apply_encoded(black_box(&br), Coding::Brotli)
                        .unwrap_or_default(),
                );
            }),
        ),
        (
            "copy of the body (memcpy floor)",
            Box::new(|| {
                black_box(black_box(body.as_bytes()).to_vec());
            }),
        ),
    ];
    for (name, mut op) in cases {
        let t = time_per_op(&mut op);
        let mb_s = body.len() as f64 / t.as_secs_f64() / 1e6;
        println!(
            "{name:<42} {:>9.1} us/body {:>8.0} MB/s",
            t.as_secs_f64() * 1e6,
            mb_s
        );
    }
}
