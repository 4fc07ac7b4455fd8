//! A minimal MQTT 3.1.1 client for load generation: packets encoded straight into a write buffer and
//! written in batches, QoS 1 with a window of in-flight publishes, and a reader that counts and
//! timestamps what a subscriber receives. rumqttc costs a channel send and an event-loop turn per
//! message; on two cores shared with the broker under test the load generator must be as cheap as it
//! can be, so it speaks the protocol itself (CONNECT, PUBLISH, PUBACK, SUBSCRIBE, DISCONNECT only).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

const CONNECT: u8 = 0x10;
const CONNACK: u8 = 0x20;
const PUBLISH: u8 = 0x30;
const PUBACK: u8 = 0x40;
const SUBSCRIBE: u8 = 0x82;
const SUBACK: u8 = 0x90;
const DISCONNECT: u8 = 0xE0;

fn put_len(buf: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        buf.push(byte);
        if len == 0 {
            break;
        }
    }
}

fn put_str(buf: &mut Vec<u8>, s: &[u8]) {
    buf.extend_from_slice(&(s.len() as u16).to_be_bytes());
    buf.extend_from_slice(s);
}

/// Appends a PUBLISH packet (`pkid` is ignored at QoS 0).
pub fn put_publish(buf: &mut Vec<u8>, topic: &[u8], payload: &[u8], qos: u8, pkid: u16) {
    buf.push(PUBLISH | (qos << 1));
    let id_len = if qos > 0 { 2 } else { 0 };
    put_len(buf, 2 + topic.len() + id_len + payload.len());
    put_str(buf, topic);
    if qos > 0 {
        buf.extend_from_slice(&pkid.to_be_bytes());
    }
    buf.extend_from_slice(payload);
}

/// A whole packet at the start of `buf`: (first byte, offset of the body, body length).
fn frame(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let first = *buf.first()?;
    let mut len = 0usize;
    let mut mult = 1usize;
    for i in 1..5 {
        let b = *buf.get(i)?;
        len += (b & 0x7F) as usize * mult;
        mult *= 128;
        if b & 0x80 == 0 {
            let start = i + 1;
            return (buf.len() >= start + len).then_some((first, start, len));
        }
    }
    None
}

/// A connected MQTT client.
pub struct Conn {
    pub stream: TcpStream,
    rbuf: Vec<u8>,
}

impl Conn {
    /// Connects with a clean session and waits for a successful CONNACK.
    ///
    /// `client_id` gets a suffix unique in this process: rumqttd 0.20 reuses a closed connection's id
    /// for the next one, so a client that reconnects with the same client id right after closing
    /// (each run of a benchmark does) can be disconnected by its own previous connection's late
    /// disconnect event (README, "Reconnecting with the same client id").
    pub async fn connect(
        addr: SocketAddr,
        client_id: &str,
        keep_alive_s: u16,
    ) -> anyhow::Result<Conn> {
        static CONNECTS: AtomicU64 = AtomicU64::new(0);
        let client_id = &format!("{client_id}-{}", CONNECTS.fetch_add(1, Relaxed));
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("TCP connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            rbuf: Vec::with_capacity(4096),
        };
        let mut p = Vec::with_capacity(32 + client_id.len());
        p.push(CONNECT);
        put_len(&mut p, 10 + 2 + client_id.len());
        put_str(&mut p, b"MQTT");
        p.push(4); // protocol level 3.1.1
        p.push(0x02); // clean session
        p.extend_from_slice(&keep_alive_s.to_be_bytes());
        put_str(&mut p, client_id.as_bytes());
        conn.stream.write_all(&p).await?;
        let (first, body) = conn.read_packet().await?;
        if first != CONNACK || body.len() != 2 || body[1] != 0 {
            bail!("{addr}: connection refused (packet {first:#x}, {body:?})");
        }
        Ok(conn)
    }

    async fn read_packet(&mut self) -> anyhow::Result<(u8, Vec<u8>)> {
        loop {
            if let Some((first, start, len)) = frame(&self.rbuf) {
                let body = self.rbuf[start..start + len].to_vec();
                self.rbuf.drain(..start + len);
                return Ok((first, body));
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed by the broker");
            }
            self.rbuf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Subscribes to `filters` at `qos` and waits for the SUBACK.
    pub async fn subscribe(&mut self, filters: &[&str], qos: u8) -> anyhow::Result<()> {
        let mut p = Vec::new();
        p.push(SUBSCRIBE);
        let len = 2 + filters.iter().map(|f| 2 + f.len() + 1).sum::<usize>();
        put_len(&mut p, len);
        p.extend_from_slice(&1u16.to_be_bytes());
        for f in filters {
            put_str(&mut p, f.as_bytes());
            p.push(qos);
        }
        self.stream.write_all(&p).await?;
        loop {
            let (first, body) = self.read_packet().await?;
            if first == SUBACK {
                if body.iter().skip(2).any(|&rc| rc == 0x80) {
                    bail!("subscription refused");
                }
                return Ok(());
            }
        }
    }

    /// Publishes one message and, at QoS 1, waits for its PUBACK.
    pub async fn publish_one(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: u8,
    ) -> anyhow::Result<()> {
        let mut p = Vec::new();
        put_publish(&mut p, topic.as_bytes(), payload, qos, 1);
        self.stream.write_all(&p).await?;
        if qos > 0 {
            loop {
                let (first, _) = self.read_packet().await?;
                if first & 0xF0 == PUBACK {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    pub fn into_split(self) -> (Reader, OwnedWriteHalf) {
        let (rd, wr) = self.stream.into_split();
        (Reader { rd, buf: self.rbuf }, wr)
    }
}

/// The read half of a connection, with whatever was already buffered.
pub struct Reader {
    rd: OwnedReadHalf,
    buf: Vec<u8>,
}

/// One received PUBLISH, borrowed from the read buffer.
pub struct Received<'a> {
    pub topic: &'a [u8],
    pub payload: &'a [u8],
}

impl Reader {
    /// Reads until the connection closes, calling `on_publish` for every PUBLISH (with the time the
    /// bytes were read), `on_puback` with the number of PUBACKs in each read, and acknowledging QoS 1
    /// publishes through `ack` when given.
    pub async fn run(
        mut self,
        mut ack: Option<OwnedWriteHalf>,
        mut on_publish: impl FnMut(Instant, Received<'_>),
        mut on_puback: impl FnMut(u64),
    ) -> anyhow::Result<()> {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut acks = Vec::with_capacity(4096);
        loop {
            let mut pos = 0;
            let mut pubacks = 0;
            let now = Instant::now();
            while let Some((first, start, len)) = frame(&self.buf[pos..]) {
                let body = &self.buf[pos + start..pos + start + len];
                match first & 0xF0 {
                    PUBLISH => {
                        let qos = (first >> 1) & 3;
                        if body.len() >= 2 {
                            let tlen = u16::from_be_bytes([body[0], body[1]]) as usize;
                            let id_len = if qos > 0 { 2 } else { 0 };
                            if body.len() >= 2 + tlen + id_len {
                                let topic = &body[2..2 + tlen];
                                if qos > 0 {
                                    acks.extend_from_slice(&[PUBACK, 2]);
                                    acks.extend_from_slice(&body[2 + tlen..2 + tlen + 2]);
                                }
                                let payload = &body[2 + tlen + id_len..];
                                on_publish(now, Received { topic, payload });
                            }
                        }
                    }
                    PUBACK => pubacks += 1,
                    _ => {}
                }
                pos += start + len;
            }
            self.buf.drain(..pos);
            if pubacks > 0 {
                on_puback(pubacks);
            }
            if !acks.is_empty() {
                if let Some(w) = ack.as_mut() {
                    w.write_all(&acks).await?;
                }
                acks.clear();
            }
            let n = self.rd.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A message to publish.
#[derive(Clone)]
pub struct Message {
    pub topic: Vec<u8>,
    pub payload: Vec<u8>,
}

/// What one publisher did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Published {
    pub sent: u64,
    pub acked: u64,
}

/// How fast to publish.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// As fast as TCP (and, at QoS 1, the window of in-flight messages) allows.
    Flat,
    /// This many messages per second, sent in 1 ms ticks.
    PerSecond(f64),
}

/// Publishes `messages` round-robin until `until`, then waits (at QoS 1, at
/// most 10 s) for the outstanding acknowledgements and disconnects. `sent` is updated as it goes.
pub async fn publish_until(
    conn: Conn,
    messages: Arc<Vec<Message>>,
    qos: u8,
    window: u64,
    pace: Pace,
    until: Instant,
    sent_total: Arc<AtomicU64>,
) -> anyhow::Result<Published> {
    let (reader, mut wr) = conn.into_split();
    let acked = Arc::new(AtomicU64::new(0));
    let wake = Arc::new(tokio::sync::Notify::new());
    let read_task = {
        let acked = acked.clone();
        let wake = wake.clone();
        tokio::spawn(async move {
            let _ = reader
                .run(
                    None,
                    |_, _| {},
                    |n| {
                        acked.fetch_add(n, Relaxed);
                        wake.notify_one();
                    },
                )
                .await;
            wake.notify_one();
        })
    };
    let start = Instant::now();
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut sent: u64 = 0;
    let mut reported: u64 = 0;
    let mut next = 0;
    let mut pkid: u16 = 0;
    let mut closed = false;
    'outer: loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        let mut quota = match pace {
            Pace::Flat => u64::MAX,
            Pace::PerSecond(rate) => {
                let due = ((now - start).as_secs_f64() * rate) as u64;
                due.saturating_sub(sent)
            }
        };
        if quota == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        while quota > 0 && buf.len() < 32 * 1024 {
            if qos > 0 && sent - acked.load(Relaxed) >= window {
                break;
            }
            let m = &messages[next % messages.len()];
            next += 1;
            pkid = if pkid == u16::MAX { 1 } else { pkid + 1 };
            put_publish(&mut buf, &m.topic, &m.payload, qos, pkid);
            sent += 1;
            quota -= 1;
        }
        if !buf.is_empty() {
            if wr.write_all(&buf).await.is_err() {
                closed = true;
                break 'outer;
            }
            sent_total.fetch_add(sent - reported, Relaxed);
            reported = sent;
            buf.clear();
        }
        if qos > 0 && sent - acked.load(Relaxed) >= window {
            let notified = wake.notified();
            if sent - acked.load(Relaxed) >= window {
                if read_task.is_finished() {
                    closed = true;
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
            }
        } else if matches!(pace, Pace::Flat) && qos == 0 {
            // Let the broker's connection task and the other publishers run.
            tokio::task::yield_now().await;
        }
    }
    if qos > 0 && !closed {
        let deadline = Instant::now() + Duration::from_secs(10);
        while acked.load(Relaxed) < sent && Instant::now() < deadline && !read_task.is_finished() {
            let notified = wake.notified();
            if acked.load(Relaxed) >= sent {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        }
    }
    let _ = wr.write_all(&[DISCONNECT, 0]).await;
    let _ = wr.shutdown().await;
    read_task.abort();
    Ok(Published {
        sent,
        acked: if qos > 0 { acked.load(Relaxed) } else { 0 },
    })
}
