//! Security in one place: the cluster secret, random tokens, the
//! authenticated handshake and the per-connection record cipher.

use ring::rand::{SecureRandom, SystemRandom};

/// Fills `out` with bytes from the operating system's CSPRNG.
///
/// # Panics
/// If the operating system's random source fails, which ring treats as
/// unrecoverable (there is nothing safe to fall back to).
pub fn fill_random(out: &mut [u8]) {
    SystemRandom::new().fill(out).expect("the operating system's random source failed");
}

/// A fresh random token of `bytes` random bytes, as lowercase hex: lease and
/// peer tokens (16 bytes = 128 bits) and cluster secrets (32 bytes).
pub fn random_token(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    fill_random(&mut raw);
    to_hex(&raw)
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
