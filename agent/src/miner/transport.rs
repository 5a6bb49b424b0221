//! Raw TCP exchanges with a miner: one connection per request, connect and total timeouts, and
//! the two framings miners use (cgminer's "read until NUL or EOF", Whatsminer v3's 4-byte
//! little-endian length prefix). Every failure becomes a [`MinerError`] naming the address.

use std::io::ErrorKind;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::MinerAddr;
use super::error::MinerError;

/// No miner reply is this large; a peer that keeps sending is cut off here (and the truncated
/// reply is handed to the tolerant parser).
pub const MAX_REPLY: usize = 4 << 20;

/// How long one request may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To establish the TCP connection.
    pub connect: Duration,
    /// For the whole exchange, connection included.
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(3),
            request: Duration::from_secs(10),
        }
    }
}

/// How a reply ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// cgminer: the reply ends with a NUL byte or when the peer closes.
    NulOrEof,
    /// Whatsminer API v3: a 4-byte little-endian length, then that many bytes.
    LengthPrefixed,
}

/// Sends `payload` to `addr` on `port` and reads one reply.
pub async fn exchange(
    addr: &MinerAddr,
    port: u16,
    payload: &[u8],
    framing: Framing,
    timeouts: Timeouts,
    command: &str,
) -> Result<Vec<u8>, MinerError> {
    exchange_sized(addr, port, payload, framing, timeouts, command, 4096).await
}

/// [`exchange`], reading into a buffer of `expect` bytes to start with (the size of this
/// miner's last reply, say), so a reply of the usual size is read without growing the buffer.
pub async fn exchange_sized(
    addr: &MinerAddr,
    port: u16,
    payload: &[u8],
    framing: Framing,
    timeouts: Timeouts,
    command: &str,
    expect: usize,
) -> Result<Vec<u8>, MinerError> {
    let label = || addr.to_string();
    // One timer for the exchange: the connect deadline, then pushed out to the reply's (moving
    // a deadline later touches no timer wheel), instead of a timer for each phase.
    let timer = tokio::time::sleep(timeouts.connect);
    tokio::pin!(timer);
    let stream = tokio::select! {
        biased;
        connected = connect(addr, port) => match connected {
            Ok(s) => s,
            Err(e) => return Err(connect_error(addr, port, &e)),
        },
        () = &mut timer => {
            return Err(MinerError::ConnectTimeout {
                addr: label(),
                port,
                after: timeouts.connect,
            });
        }
    };
    timer
        .as_mut()
        .reset(tokio::time::Instant::now() + timeouts.request);
    // No TCP_NODELAY (a syscall per read): an exchange writes one request on a fresh
    // connection, and Nagle never holds back the first segment of a connection.
    let replied = tokio::select! {
        biased;
        r = talk(stream, payload, framing, expect) => r,
        () = &mut timer => {
            return Err(MinerError::Timeout {
                addr: label(),
                during: format!("waiting for the reply to `{command}`"),
                after: timeouts.request,
            });
        }
    };
    match replied {
        Err(e) => Err(io_error(addr, command, &e)),
        Ok(bytes) if bytes.is_empty() => Err(MinerError::NoReply {
            addr: label(),
            command: command.to_owned(),
        }),
        Ok(bytes) => Ok(bytes),
    }
}

/// Connects to `addr` on `port`: straight to the socket address when the host is an IP
/// literal (as configured miners are), without formatting `host:port` and parsing it back.
async fn connect(addr: &MinerAddr, port: u16) -> std::io::Result<TcpStream> {
    match addr
        .host
        .trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
    {
        Ok(ip) => TcpStream::connect(std::net::SocketAddr::new(ip, port)).await,
        Err(_) => TcpStream::connect(addr.socket(port)).await,
    }
}

async fn talk(
    mut stream: TcpStream,
    payload: &[u8],
    framing: Framing,
    expect: usize,
) -> std::io::Result<Vec<u8>> {
    stream.write_all(payload).await?;
    stream.flush().await?;
    match framing {
        Framing::NulOrEof => read_until_nul(&mut stream, expect).await,
        Framing::LengthPrefixed => read_length_prefixed(&mut stream).await,
    }
}

/// Reads straight into the reply buffer (no bounce buffer, no copy), growing it only when a
/// reply is larger than `expect`.
async fn read_until_nul(stream: &mut TcpStream, expect: usize) -> std::io::Result<Vec<u8>> {
    let mut out: Vec<u8> = Vec::with_capacity(expect.clamp(512, MAX_REPLY));
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(4096));
        }
        let before = out.len();
        let n = match stream.read_buf(&mut out).await {
            Ok(n) => n,
            // A reset after some data: keep what came (the parser copes with truncation).
            Err(e) if !out.is_empty() && is_reset(&e) => return Ok(out),
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(out);
        }
        if let Some(i) = out[before..].iter().position(|b| *b == 0) {
            out.truncate(before + i);
            return Ok(out);
        }
        if out.len() >= MAX_REPLY {
            out.truncate(MAX_REPLY);
            return Ok(out);
        }
    }
}

async fn read_length_prefixed(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut header = [0u8; 4];
    match stream.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_REPLY {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            format!("length prefix {len} exceeds the {MAX_REPLY}-byte limit"),
        ));
    }
    let mut body = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let n = stream.read(&mut body[filled..]).await?;
        if n == 0 {
            body.truncate(filled);
            return Ok(body); // truncated: let the parser decide what survives
        }
        filled += n;
    }
    Ok(body)
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
    )
}

fn connect_error(addr: &MinerAddr, port: u16, e: &std::io::Error) -> MinerError {
    match e.kind() {
        ErrorKind::ConnectionRefused => MinerError::Refused {
            addr: addr.to_string(),
            port,
        },
        _ => MinerError::Connect {
            addr: addr.to_string(),
            port,
            message: e.to_string(),
        },
    }
}

fn io_error(addr: &MinerAddr, command: &str, e: &std::io::Error) -> MinerError {
    if is_reset(e) {
        MinerError::Reset {
            addr: addr.to_string(),
            during: format!("exchanging `{command}`"),
        }
    } else if e.kind() == ErrorKind::InvalidData {
        MinerError::Malformed {
            addr: addr.to_string(),
            command: command.to_owned(),
            problem: e.to_string(),
            snippet: String::new(),
        }
    } else {
        MinerError::Other {
            addr: addr.to_string(),
            message: format!("`{command}`: {e}"),
        }
    }
}
