//! The generator against servers with known behaviour: it sends at the rate asked, and a
//! server that stalls shows up in the percentiles the way an open-loop measurement must show
//! it.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bazaar_lab::{Baseline, Interaction, LoadSpec, Request, Stop, Target, run, run_observed};
use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::RwLock;
use tokio::time::Instant;

fn spec(rate: f64, seconds: u64) -> LoadSpec {
    LoadSpec {
        rate,
        duration: Duration::from_secs(seconds),
        warmup: Duration::ZERO,
        connections: 8,
        timeout: Duration::from_secs(10),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_sends_at_the_rate_asked_for() {
    let baseline = Baseline::start(64).await.unwrap();
    let target = Target::parse(&baseline.url()).await.unwrap();
    let report = run(&target, &spec(400.0, 2), || Request::get("/"))
        .await
        .unwrap();
    // 800 requests are scheduled in the measured two seconds; each is sent, none twice.
    assert_eq!(report.all.answered(), 800, "{:?}", report.all.statuses);
    assert_eq!(report.ok(), 800);
    let rate = report.achieved_rate();
    assert!(
        (380.0..=420.0).contains(&rate),
        "achieved {rate} req/s of 400"
    );
    assert!(report.percentile(50.0) < Duration::from_millis(50));
    // A rate whose interval is not a whole number of nanoseconds (1/75 s) still sends
    // exactly rate × duration: intended times do not drift with rounding.
    let report = run(&target, &spec(75.0, 2), || Request::get("/"))
        .await
        .unwrap();
    assert_eq!(report.all.answered(), 150);
}

/// A server that, once, `stall_at` after its first request, stops answering anyone for a
/// second.
async fn stalling_server(stall_at: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let gate = Arc::new(RwLock::new(()));
    let stalled = Arc::new(AtomicBool::new(false));
    let first: Arc<std::sync::OnceLock<Instant>> = Arc::default();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (gate, stalled, first) = (gate.clone(), stalled.clone(), first.clone());
            tokio::spawn(async move {
                let service = service_fn(move |_request| {
                    let (gate, stalled, first) = (gate.clone(), stalled.clone(), first.clone());
                    async move {
                        let began = *first.get_or_init(Instant::now);
                        if began.elapsed() >= stall_at && !stalled.swap(true, Ordering::SeqCst) {
                            let _everyone_waits = gate.write().await;
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        } else {
                            let _pass = gate.read().await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_second_stall_shows_in_the_percentiles_as_a_queue_not_as_one_slow_request() {
    let url = stalling_server(Duration::from_millis(500)).await;
    let target = Target::parse(&url).await.unwrap();
    let report = run(&target, &spec(200.0, 3), || Request::get("/"))
        .await
        .unwrap();
    assert_eq!(report.all.statuses.get(&200).copied(), Some(600));
    // Requests meant for the stalled second (a third of the run) wait until it ends, so
    // their latencies spread evenly from 0 to 1 s: P(latency > x) = (1 - x) / 3. Hence
    // p90 ≈ 0.70 s and p99 ≈ 0.97 s. A closed-loop tool would have sent almost nothing
    // during the stall and reported a p90 of milliseconds.
    let (p50, p90, p99) = (
        report.percentile(50.0),
        report.percentile(90.0),
        report.percentile(99.0),
    );
    assert!(p50 < Duration::from_millis(100), "p50 {p50:?}");
    assert!(
        (Duration::from_millis(600)..=Duration::from_millis(800)).contains(&p90),
        "p90 {p90:?}"
    );
    assert!(p99 >= Duration::from_millis(900), "p99 {p99:?}");
    assert!(
        report.max() >= Duration::from_millis(990),
        "max {:?}",
        report.max()
    );
    // Second by second, the stall is where it happened: the second after it holds the
    // queued requests (p99 near a second), the last one is quick again.
    let p99s: Vec<Duration> = report
        .timeline
        .iter()
        .map(|second| second.latency.map_or(Duration::ZERO, |l| l[2]))
        .collect();
    assert!(
        (3..=4).contains(&p99s.len()),
        "one sample a second: {p99s:?}"
    );
    assert!(p99s[0] < Duration::from_millis(100), "{p99s:?}");
    assert!(
        p99s.iter().any(|p99| *p99 >= Duration::from_millis(800)),
        "{p99s:?}"
    );
    assert!(
        p99s[p99s.len() - 1] < Duration::from_millis(100),
        "{p99s:?}"
    );
}

#[tokio::test]
async fn bad_targets_and_settings_are_refused_before_any_load() {
    for (url, reason) in [
        ("https://example.com", "https is not supported"),
        ("localhost:8080", "expected http://host:port"),
        ("http://127.0.0.1:8080/products", "without a path"),
    ] {
        let error = Target::parse(url).await.unwrap_err().to_string();
        assert!(error.contains(reason), "{url}: {error}");
    }
    // Nothing listens on a port just released.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = Target::parse(&format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    let error = run(&target, &spec(10.0, 1), || Request::get("/"))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("cannot connect"), "{error}");

    let baseline = Baseline::start(2).await.unwrap();
    let target = Target::parse(&baseline.url()).await.unwrap();
    let error = run(&target, &spec(0.0, 1), || Request::get("/"))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("invalid `rate`"), "{error}");
}

/// A server that answers one request at a time, each taking `service`: its capacity is
/// 1 / `service` requests per second.
async fn serial_server(service: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let one_at_a_time = Arc::new(tokio::sync::Mutex::new(()));
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let one_at_a_time = one_at_a_time.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_request| {
                    let one_at_a_time = one_at_a_time.clone();
                    async move {
                        let _turn = one_at_a_time.lock().await;
                        tokio::time::sleep(service).await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturation_search_finds_a_servers_known_capacity() {
    // 4 ms per request, one at a time: 250 requests per second at most.
    let url = serial_server(Duration::from_millis(4)).await;
    let target = Target::parse(&url).await.unwrap();
    let spec = bazaar_lab::SaturateSpec {
        start_rate: 50.0,
        max_rate: 5_000.0,
        growth: 2.0,
        refinements: 3,
        step: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        connections: 16,
        p99_bound: Duration::from_millis(50),
        at_half: true,
    };
    let found = bazaar_lab::saturate(
        &target,
        &spec,
        || Box::new(|| Request::get("/")),
        |_| {},
        |_| {},
        &Stop::never(),
    )
    .await
    .unwrap();
    let rate = found.rate.expect("50 req/s passes");
    assert!(
        (120.0..=260.0).contains(&rate),
        "saturation {rate} req/s for a 250 req/s server: {:?}",
        found
            .steps
            .iter()
            .map(|s| (s.rate, s.passed))
            .collect::<Vec<_>>()
    );
    assert!(
        found.steps.iter().any(|s| !s.passed),
        "the search went past capacity"
    );
    // Then once more at half the rate found: with headroom, requests rarely queue.
    let half = found.at_half.as_ref().expect("a rate was found");
    assert!(
        (half.requested_rate - rate / 2.0).abs() < 0.01,
        "{}",
        half.requested_rate
    );
    assert!(
        half.percentile(99.0) <= spec.p99_bound,
        "{:?}",
        half.percentile(99.0)
    );
}

/// A server that counts what it is asked, answering 404 on `/missing` and 200 elsewhere.
async fn counting_server() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<_>| {
                    let path = request.uri().path().to_owned();
                    log.lock().unwrap().push(path.clone());
                    async move {
                        let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
                        if path == "/missing" {
                            *response.status_mut() = hyper::StatusCode::NOT_FOUND;
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interaction_sends_its_requests_in_order_and_ends_at_the_first_failure() {
    let (url, seen) = counting_server().await;
    let target = Target::parse(&url).await.unwrap();
    let mut turn = 0;
    let report = run(&target, &spec(100.0, 1), move || {
        turn += 1;
        if turn % 2 == 0 {
            Interaction::sequence(
                "fails second",
                vec![
                    Request::get("/first"),
                    Request::get("/missing"),
                    Request::get("/never"),
                ],
            )
        } else {
            Interaction::sequence(
                "two steps",
                vec![Request::get("/first"), Request::get("/second")],
            )
        }
    })
    .await
    .unwrap();
    let seen = seen.lock().unwrap().clone();
    let count = |path: &str| seen.iter().filter(|p| *p == path).count();
    assert_eq!((count("/first"), count("/second")), (100, 50));
    assert_eq!((count("/missing"), count("/never")), (50, 0));
    let kinds: Vec<(&str, u64, u64)> = report
        .kinds
        .iter()
        .map(|(kind, f)| (*kind, f.ok(), f.errors()))
        .collect();
    assert_eq!(kinds, [("fails second", 0, 50), ("two steps", 50, 0)]);
    assert_eq!(report.all.statuses.get(&404).copied(), Some(50));
    // What the errors were, not only how many: the first 404's body.
    assert_eq!(
        report.all.first_errors.get(&404).map(String::as_str),
        Some("ok")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactions_of_one_session_take_turns_and_their_wait_is_measured() {
    // 20 ms a request, any number at once: 100 arrivals a second in one session can only be
    // served one after another, 50 a second.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (in_flight, peak) = (now.clone(), most.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (in_flight, peak) = (in_flight.clone(), peak.clone());
            tokio::spawn(async move {
                let service = service_fn(move |_request| {
                    let (in_flight, peak) = (in_flight.clone(), peak.clone());
                    async move {
                        let at_once = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(at_once, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let target = Target::parse(&url).await.unwrap();
    let session = bazaar_lab::Session::default();
    let report = run(&target, &spec(100.0, 1), move || {
        Interaction::one("click", Request::get("/")).in_session(session.clone())
    })
    .await
    .unwrap();
    assert_eq!(report.ok(), 100);
    assert_eq!(most.load(Ordering::SeqCst), 1, "one request at a time");
    // The last arrival (at 0.99 s) waits for the 99 before it: about 2 s in all.
    assert!(
        report.max() >= Duration::from_millis(900),
        "{:?}",
        report.max()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_ends_the_run_early_and_reports_what_was_measured() {
    let (url, seen) = counting_server().await;
    let target = Target::parse(&url).await.unwrap();
    let (stopper, stop) = Stop::new();
    let mut ticks = Vec::new();
    let began = Instant::now();
    let stopping = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        stopper.stop();
        stopper
    });
    let report = run_observed(
        &target,
        &spec(200.0, 30),
        || Request::get("/"),
        |progress| ticks.push(progress.clone()),
        &stop,
    )
    .await
    .unwrap();
    let _stopper = stopping.await.unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    assert!(report.interrupted);
    let measured = report.measured.as_secs_f64();
    assert!((2.4..2.7).contains(&measured), "measured {measured} s");
    // What was sent was answered and counted: nothing lost, nothing sent after the stop.
    let sent = seen.lock().unwrap().len() as u64;
    assert_eq!(report.all.answered(), sent);
    assert!(
        (480..=540).contains(&sent),
        "{sent} requests in 2.5 s at 200/s"
    );
    // Progress came once a second, at about the rate asked.
    assert!((2..=3).contains(&ticks.len()), "{ticks:?}");
    for tick in &ticks[..2] {
        assert!((150.0..250.0).contains(&tick.rate), "{tick:?}");
        assert_eq!(tick.total, Duration::from_secs(30));
    }
}

/// A server that records each request's `authorization` and `x-channel` headers.
async fn header_server() -> (String, Arc<std::sync::Mutex<Vec<(String, String)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Arc<std::sync::Mutex<Vec<(String, String)>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<_>| {
                    let header = |name: &str| {
                        request
                            .headers()
                            .get_all(name)
                            .iter()
                            .map(|v| v.to_str().unwrap().to_owned())
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    log.lock()
                        .unwrap()
                        .push((header("authorization"), header("x-channel")));
                    async move {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_targets_headers_go_with_every_request_unless_the_request_sets_its_own() {
    let (url, seen) = header_server().await;
    let headers = ["Authorization: Bearer shared", "X-Channel:  eu-shop "]
        .iter()
        .map(|h| bazaar_lab::parse_header(h).unwrap())
        .collect();
    let target = Target::parse(&url).await.unwrap().with_headers(headers);
    let mut turn = 0;
    run(&target, &spec(40.0, 1), move || {
        turn += 1;
        let request = Request::get("/");
        if turn % 2 == 0 {
            request.with_header(
                hyper::header::AUTHORIZATION,
                hyper::header::HeaderValue::from_static("Bearer own"),
            )
        } else {
            request
        }
    })
    .await
    .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 40);
    let count = |auth: &str| seen.iter().filter(|(a, _)| a == auth).count();
    assert_eq!(
        (count("Bearer shared"), count("Bearer own")),
        (20, 20),
        "{seen:?}"
    );
    assert!(
        seen.iter().all(|(_, channel)| channel == "eu-shop"),
        "{seen:?}"
    );

    for (bad, reason) in [
        ("no colon", "expected `Name: value`"),
        (": empty name", "is not a valid header name"),
        ("Host: elsewhere", "set by the generator"),
        ("X-Bad: line\nbreak", "characters a header cannot"),
    ] {
        let error = bazaar_lab::parse_header(bad).unwrap_err().to_string();
        assert!(
            error.starts_with("invalid `header`:") && error.contains(reason),
            "{bad:?}: {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_variables_are_drawn_by_zipf_popularity_or_in_turn() {
    use bazaar_lab::Workload;
    use bazaar_lab::workload::{Order, graphql_at};
    let variables: Vec<serde_json::Value> = (0..4)
        .map(|i| serde_json::json!({ "slug": format!("p{i}") }))
        .collect();
    let slug = |interaction: bazaar_lab::Interaction| {
        let request = &interaction.requests[0];
        assert_eq!(request.path, "/shop-api");
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(
            body["query"],
            "query ($slug: String!) { product(slug: $slug) { id } }"
        );
        body["variables"]["slug"].as_str().unwrap().to_owned()
    };
    let query = "query ($slug: String!) { product(slug: $slug) { id } }";
    let mut in_turn = graphql_at("/shop-api", query, variables.clone(), Order::RoundRobin);
    let drawn: Vec<String> = (0..6).map(|_| slug(in_turn.next())).collect();
    assert_eq!(drawn, ["p0", "p1", "p2", "p3", "p0", "p1"]);
    let mut popular = graphql_at("/shop-api", query, variables, Order::Zipf(1.0));
    let mut counts = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..10_000 {
        *counts.entry(slug(popular.next())).or_default() += 1;
    }
    // Zipf(1) over 4: weights 1, 1/2, 1/3, 1/4 of 25/12 — 48%, 24%, 16%, 12%.
    assert!((4_500..5_100).contains(&counts["p0"]), "{counts:?}");
    assert!(
        counts["p0"] > counts["p1"] && counts["p1"] > counts["p2"] && counts["p2"] > counts["p3"]
    );
}
