//! A minimal HTTP/1.1 endpoint for the metrics, on the tracer's own tokio
//! runtime: `GET /metrics` (OpenMetrics or the text format 0.0.4, by the
//! `Accept` header: [`super::format`]), `GET /` (a pointer to it),
//! `/healthz` and `/readyz` ([`super::health`]),
//! 404 elsewhere, 405 for other methods. One request per connection; a
//! request head larger than 8 KiB or slower than 5 s is dropped, so a stuck
//! or hostile client costs one task, never the event loop.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use prometheus_client::registry::Registry;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::MetricsError;

/// Longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many connections are served at once; more wait in the backlog.
const MAX_CONNECTIONS: usize = 64;

use super::format::Format;

/// A bound listener, made before the probes load so a taken port fails early.
pub struct Server {
    listener: std::net::TcpListener,
    registry: Arc<Registry>,
    health: Arc<super::health::Health>,
}

impl Server {
    /// Binds `addr` (validated by [`super::listen_addr`]).
    pub fn bind(addr: SocketAddr, registry: Arc<Registry>) -> Result<Server, MetricsError> {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|source| MetricsError::Bind { addr, source })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| MetricsError::Bind { addr, source })?;
        let health = Arc::default();
        Ok(Server {
            listener,
            registry,
            health,
        })
    }

    /// Liveness and readiness, for the tracer to say when its probes are attached.
    pub fn health(&self) -> Arc<super::health::Health> {
        self.health.clone()
    }

    /// The bound address (the port, when 0 was asked for).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until the runtime stops. Call from inside the runtime
    /// (`tokio::spawn(server.run())`).
    pub async fn run(self) {
        let listener = match TcpListener::from_std(self.listener) {
            Ok(l) => l,
            Err(e) => {
                log::warn!("metrics endpoint: {e}; metrics are not served");
                return;
            }
        };
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let permit = match slots.clone().acquire_owned().await {
                Ok(p) => p,
                Err(_) => return,
            };
            let (stream, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    log::debug!("metrics endpoint: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (registry, health) = (self.registry.clone(), self.health.clone());
            tokio::spawn(async move {
                if let Err(e) = handle(stream, &registry, &health).await {
                    log::debug!("metrics endpoint: {e}");
                }
                drop(permit);
            });
        }
    }
}

/// Reads one request head and answers it.
async fn handle(
    mut s: TcpStream,
    registry: &Registry,
    health: &super::health::Health,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(READ_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
                return Ok(true);
            }
            if buf.len() > MAX_HEAD {
                return Ok(false);
            }
        }
    })
    .await;
    let complete = matches!(head, Ok(Ok(true)));
    let resp = if !complete {
        response(400, "text/plain; charset=utf-8", "bad request\n", false)
    } else {
        let head = String::from_utf8_lossy(&buf);
        let mut first = head.lines().next().unwrap_or_default().split_whitespace();
        let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
        let path = target.split('?').next().unwrap_or("");
        match health.answer(path) {
            Some((code, body)) if method == "GET" || method == "HEAD" => {
                response(code, "text/plain; charset=utf-8", &body, method == "HEAD")
            }
            _ => respond(&head, registry),
        }
    };
    s.write_all(&resp).await?;
    s.shutdown().await
}

/// The response to a request head (pure, for the tests).
pub fn respond(head: &str, registry: &Registry) -> Vec<u8> {
    let mut first = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return response(405, "text/plain; charset=utf-8", "only GET\n", false);
    }
    match path {
        "/metrics" => {
            let format = Format::negotiate(header(head, "accept"));
            let body = super::format::encode(registry, format);
            response(200, format.content_type(), &body, head_only)
        }
        "/" => response(
            200,
            "text/html; charset=utf-8",
            "<html><body><a href=\"/metrics\">kmem-trace metrics</a></body></html>\n",
            head_only,
        ),
        _ => response(
            404,
            "text/plain; charset=utf-8",
            "not found; try /metrics\n",
            head_only,
        ),
    }
}

/// The value of header `name` (lower case) in a request head.
fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

fn response(code: u16, ctype: &str, body: &str, head_only: bool) -> Vec<u8> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "Method Not Allowed",
    };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if code == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}
