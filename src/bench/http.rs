//! A minimal HTTP/1.1 keep-alive client for the REST load and for reading the hub's `/metrics`: GET and an
//! empty POST, bodies framed by Content-Length (what axum sends). Cheap, like the MQTT load client.

use std::net::SocketAddr;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One keep-alive connection.
pub struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
    host: String,
}

/// A response: status and body.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl HttpConn {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<HttpConn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("HTTP connect to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            stream,
            buf: Vec::with_capacity(8192),
            host: addr.to_string(),
        })
    }

    /// GET `path`; the connection stays open for the next request.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<Response> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        self.send(req.as_bytes()).await
    }

    /// POST `path` with an empty body.
    pub async fn post(&mut self, path: &str) -> anyhow::Result<Response> {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
            self.host
        );
        self.send(req.as_bytes()).await
    }

    async fn send(&mut self, req: &[u8]) -> anyhow::Result<Response> {
        self.stream.write_all(req).await?;
        let mut chunk = [0u8; 16 * 1024];
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed before a response");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).context("response head")?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("status line")?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())
                    .flatten()
            })
            .context("response without Content-Length")?;
        while self.buf.len() < head_end + len {
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed inside a body");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body = self.buf[head_end..head_end + len].to_vec();
        self.buf.drain(..head_end + len);
        Ok(Response { status, body })
    }
}

/// Sums the values of every `/metrics` line whose name (before any `{`) is `name`.
pub fn metric_sum(text: &str, name: &str) -> Option<u64> {
    let mut found = false;
    let mut sum = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let key_name = key.split('{').next().unwrap_or(key);
        if key_name == name {
            if let Ok(v) = value.trim().parse::<u64>() {
                sum += v;
                found = true;
            }
        }
    }
    found.then_some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_labelled_counters() {
        let text = "# HELP x\nsmarthub_readings_stored_total{kind=\"light\"} 3\nsmarthub_readings_stored_total{kind=\"tv\"} 4\nsmarthub_messages_lost_total 0\n";
        assert_eq!(metric_sum(text, "smarthub_readings_stored_total"), Some(7));
        assert_eq!(metric_sum(text, "smarthub_messages_lost_total"), Some(0));
        assert_eq!(metric_sum(text, "nope"), None);
    }
}
