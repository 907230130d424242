//! TCP simultaneous open through two NATs ([`Rendezvous::Punch`]): each
//! end dials the meeting tracker from a port of its own, learns from it
//! the address the other end's connection came from (its NAT's public
//! address and port), and dials that address from the same port, both at
//! once. Each NAT then sees the other's SYN as an answer to a connection
//! its own side opened, and lets it in; the two SYNs cross and TCP joins
//! them into one connection. It needs NATs that keep a connection's port
//! whatever its destination (Linux's masquerade does, unless told to pick
//! random ports); where it fails, the ends fall back to a splice.
//!
//! [`Rendezvous::Punch`]: crate::proto::Rendezvous::Punch

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::proto::{Rendezvous, SpliceId, PUNCH_ADDR_LEN};
use crate::{deadline, Error, Result};

/// The pause between two attempts of the simultaneous open: an attempt
/// whose SYN met a NAT that answers unsolicited SYNs with a reset (before
/// it saw the other side's) is refused at once, and the next one goes out
/// this much later.
const RETRY: Duration = Duration::from_millis(20);
/// How long one attempt waits for its SYN to be answered: a NAT that
/// drops an unsolicited SYN (most do) leaves the attempt waiting, and the
/// other end's SYN, once it comes, is let in as the answer to it; the
/// kernel sends the SYN again after a second.
const ATTEMPT: Duration = Duration::from_secs(2);

/// A socket on `local` (port 0: any) that other sockets may share, so the
/// dial to the tracker and the dial to the other end leave from one port.
fn shared_socket(local: SocketAddr) -> Result<TcpSocket> {
    let socket = if local.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.bind(local)?;
    Ok(socket)
}

/// One end's connection to the meeting tracker of a punch.
#[derive(Debug)]
pub struct Meeting {
    stream: TcpStream,
    /// Where the connection left from: the port the punch dials from.
    pub local: SocketAddr,
}

impl Meeting {
    /// Dials the tracker at `tracker` (`host:port`) for punch `id` from a
    /// shareable port (within `within`).
    ///
    /// # Errors
    /// If `tracker` does not resolve or cannot be reached in time.
    pub async fn dial(tracker: &str, id: SpliceId, within: Duration) -> Result<Self> {
        let tracker = tokio::net::lookup_host(tracker)
            .await?
            .next()
            .ok_or_else(|| Error::Invalid(format!("{tracker} resolves to no address")))?;
        let any = if tracker.is_ipv4() { IpAddr::from([0, 0, 0, 0]) } else { IpAddr::from(Ipv6Addr::UNSPECIFIED) };
        let socket = shared_socket(SocketAddr::new(any, 0))?;
        let mut stream = deadline(within, "the meeting tracker", async { Ok(socket.connect(tracker).await?) }).await?;
        let local = stream.local_addr()?;
        stream.write_all(&Rendezvous::Punch(id).hello()).await?;
        Ok(Self { stream, local })
    }

    /// Waits (at most `within`) for the other end's address, as the
    /// tracker saw its connection come.
    ///
    /// # Errors
    /// If the tracker drops the connection (an id it does not expect, or
    /// the other end never came) or `within` passes.
    pub async fn other(mut self, within: Duration) -> Result<SocketAddr> {
        let mut other = [0; PUNCH_ADDR_LEN];
        deadline(within, "the other end's address", async {
            self.stream
                .read_exact(&mut other)
                .await
                .map_err(|_| Error::Closed("the meeting tracker (no other end came)"))
        })
        .await?;
        Ok(decode_addr(&other))
    }
}

/// Dials `other` from `local` (the port [`meet`] left from) until the two
/// ends' dials cross, for at most `within`.
///
/// # Errors
/// [`Error::Io`] (timed out) if no attempt connected within `within`.
pub async fn open(local: SocketAddr, other: SocketAddr, within: Duration) -> Result<TcpStream> {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < within {
        let socket = shared_socket(local)?;
        let left = within.saturating_sub(started.elapsed()).min(ATTEMPT);
        match tokio::time::timeout(left, socket.connect(other)).await {
            Ok(Ok(stream)) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Ok(Err(e)) => last = Some(e),
            Err(_) => {}
        }
        tokio::time::sleep(RETRY).await;
    }
    let why = format!(
        "no simultaneous open with {other} from {local} within {within:?}{}",
        last.map(|e| format!(" (last attempt: {e})")).unwrap_or_default()
    );
    Err(Error::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, why)))
}

/// `addr` as a tracker answers a punch: its IPv6 (or IPv4-mapped) address
/// and port, big-endian.
pub fn encode_addr(addr: SocketAddr) -> [u8; PUNCH_ADDR_LEN] {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let mut out = [0; PUNCH_ADDR_LEN];
    out[..16].copy_from_slice(&ip.octets());
    out[16..].copy_from_slice(&addr.port().to_be_bytes());
    out
}

/// The inverse of [`encode_addr`] (an IPv4-mapped address back to IPv4).
pub fn decode_addr(bytes: &[u8; PUNCH_ADDR_LEN]) -> SocketAddr {
    let octets: [u8; 16] = bytes[..16].try_into().expect("16 bytes");
    let ip = Ipv6Addr::from(octets);
    let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
    SocketAddr::new(ip, u16::from_be_bytes([bytes[16], bytes[17]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_cross_the_wire_unchanged() {
        for addr in ["10.1.2.3:7700", "[2001:db8::7]:9", "0.0.0.0:0"] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(decode_addr(&encode_addr(addr)), addr);
        }
    }
}
