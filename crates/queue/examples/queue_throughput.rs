//! A rough throughput figure for the embedded queue: publishes N messages from C concurrent
//! publishers, then drains them with R receivers (receive a batch, ack each).
//!
//! `cargo run -p bazaar-queue --example queue_throughput -- [N] [C] [R] [full|normal]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use bazaar_queue::{Durability, EmbeddedConfig, EmbeddedQueue, GroupSpec, Message, Queue};
use bytes::Bytes;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let arg =
        |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (total, publishers, receivers) = (arg(1, 2000), arg(2, 4), arg(3, 2));
    let durability = match args.get(4).map(String::as_str) {
        Some("normal") => Durability::Normal,
        _ => Durability::Full,
    };
    let dir = tempfile::TempDir::new()?;
    let queue = Arc::new(
        EmbeddedQueue::open(
            &dir.path().join("queue.sqlite"),
            EmbeddedConfig {
                durability,
                ..EmbeddedConfig::default()
            },
        )
        .await?,
    );
    let group = GroupSpec {
        name: "bench".to_owned(),
        lease: Duration::from_secs(60),
        max_attempts: 5,
    };
    queue.declare(&group).await?;

    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let queue = Arc::clone(&queue);
        tasks.push(tokio::spawn(async move {
            for i in (p..total).step_by(publishers) {
                let message = Message {
                    id: format!("m-{i}"),
                    key: format!("k{}", i % 64),
                    topic: "bench".to_owned(),
                    payload: Bytes::from(vec![b'x'; 256]),
                    delay: None,
                };
                queue.publish(&message).await.expect("publish");
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let published = start.elapsed();
    println!(
        "publish: {total} in {published:?} = {:.0}/s ({publishers} publishers, {durability:?})",
        total as f64 / published.as_secs_f64()
    );

    let start = Instant::now();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..receivers {
        let queue = Arc::clone(&queue);
        let group = group.clone();
        let done = Arc::clone(&done);
        tasks.push(tokio::spawn(async move {
            let sub = queue.declare(&group).await.expect("declare");
            let (mut in_receive, mut in_ack, mut batches) = (Duration::ZERO, Duration::ZERO, 0);
            while done.load(std::sync::atomic::Ordering::Relaxed) < total {
                let t = Instant::now();
                let got = sub
                    .receive(64, Duration::from_millis(50))
                    .await
                    .expect("receive");
                in_receive += t.elapsed();
                batches += 1;
                let t = Instant::now();
                for d in got {
                    sub.ack(&d).await.expect("ack");
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                in_ack += t.elapsed();
            }
            println!("  receiver: {batches} receives, {in_receive:?} receiving, {in_ack:?} acking");
        }));
    }
    for task in tasks {
        task.await?;
    }
    let drained = start.elapsed();
    println!(
        "receive+ack: {total} in {drained:?} = {:.0}/s ({receivers} receivers)",
        total as f64 / drained.as_secs_f64()
    );
    Ok(())
}
