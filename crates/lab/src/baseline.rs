//! The in-process baseline: a bare hyper server answering every request with the same body.
//!
//! Measured in the same run as a real endpoint, it gives the ceiling of this machine, this
//! load generator and this HTTP stack, so a figure can be reported as a ratio to it rather
//! than as an absolute number that means nothing on another machine.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running baseline server; stops when dropped.
#[derive(Debug)]
pub struct Baseline {
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Baseline {
    /// Starts a server on 127.0.0.1 (a free port) answering `200` with `body_size` bytes of
    /// JSON-ish filler.
    pub async fn start(body_size: usize) -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().expect("a socket address"), body_size).await
    }

    /// The same, listening on `addr`.
    pub async fn start_on(addr: SocketAddr, body_size: usize) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let body = Bytes::from(filler(body_size));
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let body = body.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |_request| {
                        let body = body.clone();
                        async move {
                            let mut response = Response::new(Full::new(body));
                            response.headers_mut().insert(
                                header::CONTENT_TYPE,
                                header::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, accept })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its origin, `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// `size` bytes shaped like a JSON string: `"xxxx…"`.
fn filler(size: usize) -> Vec<u8> {
    match size {
        0 => Vec::new(),
        1 => b"0".to_vec(),
        _ => {
            let mut body = vec![b'x'; size];
            body[0] = b'"';
            body[size - 1] = b'"';
            body
        }
    }
}
