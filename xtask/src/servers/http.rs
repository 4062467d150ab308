//! An HTTP/1.1 client on loopback that keeps its connection open between
//! requests, as real clients of these servers do: the servers then hold
//! a connection goroutine parked in a read for as long as it lives.

use std::{
    fmt::Write as _,
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Mutex,
    },
    time::Duration,
};

use anyhow::{bail, Context};

/// Requests answered 2xx and the others, with the last failure.
#[derive(Default)]
pub struct Counts {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub last_failure: Mutex<String>,
}

impl Counts {
    /// Sends one request on `conn` and counts it; the body of a 2xx answer.
    pub fn send(&self, conn: &mut Conn, method: &str, path: &str, body: &Body) -> Option<String> {
        let failure = match conn.request(method, path, body) {
            Ok((status, text)) if (200..300).contains(&status) => {
                self.ok.fetch_add(1, Relaxed);
                return Some(text);
            }
            Ok((status, text)) => format!("{method} {path}: {status} {}", text.trim()),
            Err(e) => format!("{e:#}"),
        };
        self.failed.fetch_add(1, Relaxed);
        *self.last_failure.lock().expect("counts") = failure.chars().take(200).collect();
        None
    }

    pub fn get(&self, conn: &mut Conn, path: &str) -> Option<String> {
        self.send(conn, "GET", path, &Body::None)
    }
}

/// A keep-alive connection to `127.0.0.1:port`, opened on first use and
/// again whenever the server closed it.
pub struct Conn {
    port: u16,
    stream: Option<BufReader<TcpStream>>,
}

/// What a request sends besides its method and path.
pub enum Body<'a> {
    None,
    Json(&'a str),
    Text(&'a str),
}

impl Conn {
    pub fn new(port: u16) -> Self {
        Self { port, stream: None }
    }

    pub fn get(&mut self, path: &str) -> anyhow::Result<(u16, String)> {
        self.request("GET", path, &Body::None)
    }

    /// Sends one request and reads its answer: (status, body). A request
    /// on a kept connection the server has since closed is sent once more
    /// on a new one.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &Body,
    ) -> anyhow::Result<(u16, String)> {
        let reused = self.stream.is_some();
        match self.exchange(method, path, body) {
            Err(_) if reused => self.exchange(method, path, body),
            other => other,
        }
        .with_context(|| format!("{method} 127.0.0.1:{}{path}", self.port))
    }

    /// Drops the connection; the next request opens a new one.
    pub fn close(&mut self) {
        self.stream = None;
    }

    fn exchange(&mut self, method: &str, path: &str, body: &Body) -> anyhow::Result<(u16, String)> {
        let mut stream = if let Some(s) = self.stream.take() {
            s
        } else {
            let s = TcpStream::connect(("127.0.0.1", self.port))?;
            s.set_read_timeout(Some(Duration::from_secs(15)))?;
            BufReader::new(s)
        };
        let (kind, content) = match body {
            Body::None => (None, ""),
            Body::Json(t) => (Some("application/json"), *t),
            Body::Text(t) => (Some("text/plain; version=0.0.4"), *t),
        };
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n",
            self.port
        );
        if let Some(kind) = kind {
            let _ = write!(
                head,
                "Content-Type: {kind}\r\nContent-Length: {}\r\n",
                content.len()
            );
        }
        head += "\r\n";
        let w = stream.get_mut();
        w.write_all(head.as_bytes())?;
        w.write_all(content.as_bytes())?;
        let answer = read_response(&mut stream, method == "HEAD")?;
        if answer.keep_alive {
            self.stream = Some(stream);
        }
        Ok((answer.status, answer.body))
    }
}

/// One parsed answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
    keep_alive: bool,
}

/// Reads one response: a `Content-Length` body, a chunked one, or one that
/// ends with the connection.
fn read_response(r: &mut impl BufRead, head_only: bool) -> anyhow::Result<Answer> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status line: {line:?}"))?;
    let (mut length, mut chunked, mut keep_alive) = (None, false, true);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            bail!("connection closed in the headers");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let (name, value) = (name.to_ascii_lowercase(), value.trim().to_ascii_lowercase());
        match name.as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.contains("chunked"),
            "connection" => keep_alive = value != "close",
            _ => {}
        }
    }
    let mut body = Vec::new();
    let bodiless = head_only || status == 204 || status == 304 || status < 200;
    if bodiless {
        // Nothing follows the headers.
    } else if chunked {
        read_chunks(r, &mut body)?;
    } else if let Some(n) = length {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
        keep_alive = false;
    }
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        keep_alive,
    })
}

fn read_chunks(r: &mut impl BufRead, body: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let size = line.trim().split(';').next().unwrap_or_default();
        let size =
            usize::from_str_radix(size, 16).with_context(|| format!("bad chunk size {line:?}"))?;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                line.clear();
                if r.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                    return Ok(());
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        line.clear();
        r.read_line(&mut line)?;
    }
}

#[cfg(test)]
mod tests {
    use super::read_response;

    #[test]
    fn reads_chunked_then_the_next_answer() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                    4\r\nabcd\r\n2;x=y\r\nef\r\n0\r\n\r\n\
                    HTTP/1.1 204 No Content\r\n\r\n\
                    HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nConnection: close\r\n\r\nnopEXTRA";
        let mut r = &raw[..];
        let a = read_response(&mut r, false).unwrap();
        assert_eq!(
            (a.status, a.body.as_str(), a.keep_alive),
            (200, "abcdef", true)
        );
        let b = read_response(&mut r, false).unwrap();
        assert_eq!((b.status, b.body.as_str()), (204, ""));
        let c = read_response(&mut r, false).unwrap();
        assert_eq!(
            (c.status, c.body.as_str(), c.keep_alive),
            (404, "nop", false)
        );
    }

    #[test]
    fn reads_to_the_end_without_a_length() {
        let mut r = &b"HTTP/1.0 200 OK\r\n\r\nall of it"[..];
        let a = read_response(&mut r, false).unwrap();
        assert_eq!((a.body.as_str(), a.keep_alive), ("all of it", false));
    }
}
