//! A deliberately small HTTP/1.1 over loopback TCP: a keep-alive client
//! that costs the load generator as little CPU as possible, and the
//! provider receiver that stands in for an `http` provider and records when
//! each grant and revoke call arrives.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Microseconds since the Unix epoch, the unit warrant stores times in.
pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Reads one message (head and `content-length` body). `buf` keeps what
/// was read past it. `Ok(None)`: the peer closed between messages.
async fn read_message(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> io::Result<Option<(String, Vec<u8>)>> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = header_value(&head, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let total = end + 4 + len;
            while buf.len() < total {
                buf.reserve(total - buf.len());
                if stream.read_buf(buf).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            let body = buf[end + 4..total].to_vec();
            buf.drain(..total);
            return Ok(Some((head, body)));
        }
        buf.reserve(16 * 1024);
        if stream.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
    }
}

/// A request's bytes, ready to write.
pub fn request(
    method: &str,
    path: &str,
    addr: SocketAddr,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 512);
    out.extend_from_slice(format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\n").as_bytes());
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// One keep-alive connection, reopened when the server closes it.
pub struct Client {
    addr: SocketAddr,
    conn: Option<(TcpStream, Vec<u8>)>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client { addr, conn: None }
    }

    pub async fn send(&mut self, req: &[u8]) -> io::Result<Response> {
        // A reused connection the server closed while idle fails before any
        // answer; that one is retried once on a new connection.
        for reused in [self.conn.is_some(), false] {
            if self.conn.is_none() {
                let s = TcpStream::connect(self.addr).await?;
                s.set_nodelay(true)?;
                self.conn = Some((s, Vec::with_capacity(16 * 1024)));
            }
            let Some((stream, buf)) = self.conn.as_mut() else {
                continue;
            };
            let result = async {
                stream.write_all(req).await?;
                read_message(stream, buf).await
            }
            .await;
            match result {
                Ok(Some((head, body))) => {
                    let status = head
                        .split_whitespace()
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    if header_value(&head, "connection")
                        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                    {
                        self.conn = None;
                    }
                    return Ok(Response { status, body });
                }
                Ok(None) | Err(_) if reused => self.conn = None,
                Ok(None) => {
                    self.conn = None;
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                Err(e) => {
                    self.conn = None;
                    return Err(e);
                }
            }
        }
        Err(io::ErrorKind::UnexpectedEof.into())
    }

    /// A bodyless GET.
    pub async fn get(&mut self, path: &str, auth: Option<&str>) -> io::Result<Response> {
        let bearer = auth.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .as_deref()
            .map(|b| vec![("authorization", b)])
            .unwrap_or_default();
        let req = request("GET", path, self.addr, &headers, b"");
        self.send(&req).await
    }
}

/// One provider call as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Call {
    /// When the whole request had arrived, µs since the epoch.
    pub at_us: i64,
    pub action: String,
    pub grant_id: String,
    pub ticket: String,
    /// The grant's `expires_at` from the call, µs since the epoch.
    pub expires_at_us: i64,
}

/// A loopback `http` provider endpoint that answers 200 to everything.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Receiver {
    pub async fn start() -> io::Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/access", listener.local_addr()?);
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let sink = calls.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sink = sink.clone();
                tokio::spawn(serve(stream, sink));
            }
        });
        Ok(Receiver { url, calls })
    }

    pub fn len(&self) -> usize {
        self.calls.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// The calls from index `from` on.
    pub fn since(&self, from: usize) -> Vec<Call> {
        self.calls
            .lock()
            .map(|c| c.get(from..).map(<[Call]>::to_vec).unwrap_or_default())
            .unwrap_or_default()
    }
}

async fn serve(mut stream: TcpStream, sink: Arc<Mutex<Vec<Call>>>) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(8 * 1024);
    while let Ok(Some((_head, body))) = read_message(&mut stream, &mut buf).await {
        let at_us = now_us();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        let expires_at_us = chrono::DateTime::parse_from_rfc3339(&s("expires_at"))
            .map(|t| t.timestamp_micros())
            .unwrap_or(0);
        let call = Call {
            at_us,
            action: s("action"),
            grant_id: s("grant_id"),
            ticket: s("ticket"),
            expires_at_us,
        };
        if let Ok(mut c) = sink.lock() {
            c.push(call);
        }
        if stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .is_err()
        {
            break;
        }
    }
}
