//! Publish → consume throughput and end-to-end latency of each queue backend, in one run.
//!
//! ```text
//! cargo run --release -p bazaar-queue --example throughput -- [messages=20000] [keys=256]
//! ```
//!
//! For each backend — the embedded queue at `synchronous=FULL` and at `NORMAL`, and NATS
//! JetStream when `BAZAAR_TEST_NATS_URL` is set — one task publishes `messages` messages in
//! batches of 100 (as the outbox relay does) over `keys` ordering keys, while one receiver per
//! process-equivalent (4 tasks, one consumer group) receives batches of up to 100 and acks
//! each. Latency is from a message's publish to its ack. Prints a Markdown table.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bazaar_queue::nats::{NatsConfig, NatsQueue};
use bazaar_queue::sqlite::{Durability, EmbeddedConfig, EmbeddedQueue};
use bazaar_queue::{GroupSpec, Message, Queue};
use bytes::Bytes;
use hdrhistogram::Histogram;

const BATCH: usize = 100;
const RECEIVERS: usize = 4;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let messages: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let keys: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(256);
    let dir = tempfile::tempdir().expect("a temporary directory");
    println!("| backend | messages | publish→ack msg/s | p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, durability) in [
        ("embedded, FULL", Durability::Full),
        ("embedded, NORMAL", Durability::Normal),
    ] {
        let path = dir.path().join(format!("{durability:?}.sqlite"));
        let queue = EmbeddedQueue::open(
            &path,
            EmbeddedConfig {
                durability,
                ..EmbeddedConfig::default()
            },
        )
        .await
        .expect("the embedded queue opens");
        measure(name, Arc::new(queue), messages, keys).await;
    }
    match std::env::var("BAZAAR_TEST_NATS_URL") {
        Ok(url) => {
            let stream = format!("BAZAAR_BENCH_{}", std::process::id());
            let config = NatsConfig {
                url,
                dead_letter_stream: format!("{stream}_DLQ"),
                subject_prefix: stream.to_ascii_lowercase(),
                stream,
                ..NatsConfig::default()
            };
            let queue = NatsQueue::connect(config).await.expect("NATS is reachable");
            let queue = Arc::new(queue);
            measure("NATS JetStream 2.9", queue.clone(), messages, keys).await;
            queue.delete_streams().await.expect("the bench streams go");
        }
        Err(_) => eprintln!("(NATS skipped: BAZAAR_TEST_NATS_URL is not set)"),
    }
}

async fn measure(name: &str, queue: Arc<dyn Queue>, messages: usize, keys: usize) {
    let spec = GroupSpec {
        name: "bench".into(),
        lease: Duration::from_secs(30),
        max_attempts: 5,
    };
    let mut receivers = Vec::new();
    for _ in 0..RECEIVERS {
        receivers.push(queue.declare(&spec).await.expect("the group is declared"));
    }
    let started = Instant::now();
    let publisher = {
        let queue = queue.clone();
        tokio::spawn(async move {
            let mut sent = 0;
            while sent < messages {
                let batch: Vec<Message> = (sent..(sent + BATCH).min(messages))
                    .map(|i| Message {
                        id: format!("m-{i}"),
                        key: format!("k-{}", i % keys),
                        topic: "bench".into(),
                        payload: Bytes::from_static(&[b'x'; 512]),
                        delay: None,
                    })
                    .collect();
                sent += batch.len();
                queue.publish_batch(&batch).await.expect("publish");
            }
        })
    };
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for receiver in receivers {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new(3).expect("a histogram");
            while done.load(std::sync::atomic::Ordering::SeqCst) < messages {
                let batch = receiver
                    .receive(BATCH, Duration::from_millis(200))
                    .await
                    .expect("receive");
                for delivery in batch {
                    receiver.ack(&delivery).await.expect("ack");
                    let waited = SystemTime::now()
                        .duration_since(delivery.published_at)
                        .unwrap_or_default();
                    latency.record(waited.as_micros() as u64).expect("in range");
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
            latency
        }));
    }
    publisher.await.expect("the publisher finishes");
    let mut latency = Histogram::<u64>::new(3).expect("a histogram");
    for task in tasks {
        latency
            .add(task.await.expect("a receiver finishes"))
            .expect("same bounds");
    }
    let elapsed = started.elapsed();
    let ms = |micros: u64| format!("{:.1} ms", micros as f64 / 1000.0);
    println!(
        "| {name} | {messages} | {:.0} | {} | {} | {} |",
        messages as f64 / elapsed.as_secs_f64(),
        ms(latency.value_at_quantile(0.50)),
        ms(latency.value_at_quantile(0.99)),
        ms(latency.max()),
    );
}
