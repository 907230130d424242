//! Security in one place: the cluster secret, random tokens, the
//! authenticated handshake every connection starts with, and the
//! per-connection record cipher. Nothing here knows about matrices or
//! leases; the rest of septet sees an authenticated [`crate::Connection`].
//!
//! # Threat model
//! An **outsider** can reach every port, read and inject packets, and record
//! and replay whole conversations, but does not hold the cluster secret. It
//! must not get past the handshake: not join, list, lease, release, nor send
//! or read matrices. An **insider** holds the secret and is trusted to speak
//! the protocol (it may still be buggy; Freivalds' check guards its products).
//!
//! # The handshake
//! ```text
//! client → server  ClientHello  magic "SPTT" version:u32 role:u8 flags:u8 0:u16 nonce_c[32]
//! server → client  ServerHello  magic "SPTT" version:u32 status:u8 flags:u8 0:u16 nonce_s[32]
//! with a secret K (both sides, else the hellos' flags refuse):
//! client → server  proof_c = HMAC-SHA256(K, "septet/2 client proof" ‖ T)
//! server → client  status:u8 proof_s = HMAC-SHA256(K, "septet/2 server proof" ‖ T)
//! ```
//! `T` is the transcript: both hellos' bytes as sent, so both fresh nonces,
//! both versions, the role and both sides' flags (a party that asked for
//! encryption cannot be talked out of it: the flags are under the MACs).
//! Why this resists what it must:
//! - **Replay**: a recorded proof covers the nonces of its own connection;
//!   the other side's fresh 256-bit nonce makes every new transcript
//!   different, so an old proof never verifies again.
//! - **Reflection**: the two proofs carry different labels, so a server's
//!   proof is never a valid client proof (nor the reverse), and the server
//!   only computes its proof after the client proved itself, so an outsider
//!   cannot use a server as an oracle for anything.
//! - **The secret never crosses the wire**: only HMACs of it. The client
//!   proves first, so a server never says anything keyed to a peer that has
//!   not shown it holds the secret; an offline guess at a 256-bit random
//!   secret from a recorded transcript is hopeless.
//! - HMACs are compared in constant time (`ring::hmac::verify`).
//!
//! Without `--encrypt`, the handshake authenticates both ends but the bytes
//! after it travel in clear, unauthenticated: an on-path attacker who can
//! rewrite TCP segments could still read or alter them. `--encrypt` closes
//! that: every byte after the handshake travels in AES-128-GCM records under
//! two keys, one per direction, from HKDF-SHA256(salt = T, ikm = K), so each
//! connection has its own keys and nonces are a per-direction record counter
//! that never repeats under a key.
//!
//! # Records (with `--encrypt`)
//! ```text
//! record := len:u32 (plaintext bytes, 1..=MAX_RECORD, little-endian) ciphertext[len] tag[16]
//! ```
//! The length is the AEAD's associated data, so it cannot be altered either;
//! a record that fails to open closes the connection.
//!
//! # Why ring
//! One well-kept crate (the crypto under rustls) gives everything here —
//! HMAC, HKDF, AES-GCM and the OS random source — builds with only a C
//! compiler, and its AES-GCM uses AES-NI with VAES/VPCLMULQDQ where the CPU
//! has them. Its in-place sealing and opening let matrix payloads be
//! decrypted where they land, without an extra copy.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use ring::agreement;
use ring::hkdf;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{Error, Result, Role, PROTOCOL_VERSION};

/// Bytes of a cluster secret: 256 random bits.
pub const SECRET_LEN: usize = 32;
/// Bytes of each side's handshake nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes of an HMAC-SHA256 proof.
const PROOF_LEN: usize = 32;
/// Bytes of either hello.
pub const HELLO_LEN: usize = 4 + 4 + 1 + 1 + 2 + NONCE_LEN;
/// The first four bytes of every septet connection.
pub const MAGIC: [u8; 4] = *b"SPTT";
/// Largest plaintext of one encrypted record.
pub const MAX_RECORD: usize = 256 << 10;
/// Bytes of a record's length field.
pub const RECORD_HEADER: usize = 4;
/// Bytes of a record's authentication tag.
pub const TAG_LEN: usize = 16;

const FLAG_SECRET: u8 = 1;
const FLAG_ENCRYPT: u8 = 2;
const CLIENT_PROOF: &[u8] = b"septet/2 client proof";
const SERVER_PROOF: &[u8] = b"septet/2 server proof";
const KEY_C2S: &[u8] = b"septet/8 client to server";
const KEY_S2C: &[u8] = b"septet/8 server to client";
const KEY_LABEL: &[u8] = b"septet/8 key";
const NEXT_LABEL: &[u8] = b"septet/8 next";
/// Bytes of an X25519 public key.
pub const EPHEMERAL_LEN: usize = 32;
/// Records sealed under one key before both sides move to the next (see
/// [`Sealer`]): at most 2¹⁶ × 256 KiB = 16 GiB per key, far inside
/// AES-GCM's limits for counter nonces, and each step forgets the last key.
pub const REKEY_RECORDS: u64 = 1 << 16;
/// The length field of the authenticated close record: the top bit set,
/// no plaintext. Sent by [`crate::FrameWriter::shutdown`] on an encrypted
/// connection; after it nothing may follow.
pub const CLOSE_RECORD: u32 = 1 << 31;

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

/// The cluster secret: 256 random bits every member of a grid holds. Its
/// memory is zeroed when it is dropped. (ring's HMAC and HKDF keys made
/// from it for a handshake live only as long as the handshake, and are
/// not zeroed by ring.)
#[derive(Clone)]
pub struct Secret([u8; SECRET_LEN]);

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why a secret file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// `septet secret --out` never overwrites a file.
    #[error("{path} already exists; septet never overwrites a secret file (choose another path or remove it)")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// Other users can read the file (and so join the grid).
    #[error(
        "{path} can be read by other users (mode {mode:o}): anyone who reads it can join the grid; \
         run `chmod 600 {path}`, or pass --allow-readable-secret if that is intended"
    )]
    Readable {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file does not hold a secret as `septet secret` writes it.
    #[error("{path} does not hold a septet secret ({reason}); make one with `septet secret --out FILE`")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl Secret {
    /// A new random secret.
    pub fn generate() -> Self {
        let mut key = [0u8; SECRET_LEN];
        fill_random(&mut key);
        Self(key)
    }

    /// The secret as the text `septet secret` prints: 64 hex digits.
    pub fn to_text(&self) -> String {
        to_hex(&self.0)
    }

    /// Parses the text of [`Secret::to_text`]; surrounding white space is ignored.
    ///
    /// # Errors
    /// A reason, when the text is not 64 hex digits.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let text = text.trim();
        if text.len() != 2 * SECRET_LEN {
            return Err(format!("expected {} hex digits, found {} characters", 2 * SECRET_LEN, text.len()));
        }
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("expected hex digits only".into());
        }
        let mut key = Secret([0u8; SECRET_LEN]);
        for (i, byte) in key.0.iter_mut().enumerate() {
            *byte =
                u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| "expected hex digits only".to_string())?;
        }
        Ok(key)
    }

    /// Reads a secret file: opened once, and what was opened is checked —
    /// a regular file of at most 1 KiB that only its owner can read (unless
    /// `allow_readable`, when the secret comes with a warning to show).
    ///
    /// # Errors
    /// [`SecretFileError`] when the file cannot be read, others can read it
    /// (and that is not allowed), or it holds no secret.
    pub fn load(path: &Path, allow_readable: bool) -> std::result::Result<(Self, Option<String>), SecretFileError> {
        use std::io::Read as _;
        let io = |source| SecretFileError::Io { path: path.to_path_buf(), source };
        let malformed = |reason: String| SecretFileError::Malformed { path: path.to_path_buf(), reason };
        let mut file = std::fs::File::open(path).map_err(io)?;
        // The checks are on the file opened, not on the path again.
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(malformed("not a regular file".into()));
        }
        if meta.len() > 1024 {
            return Err(malformed(format!("{} bytes", meta.len())));
        }
        #[cfg(unix)]
        let warning = {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 && !allow_readable {
                return Err(SecretFileError::Readable { path: path.to_path_buf(), mode });
            }
            (mode & 0o077 != 0).then(|| {
                format!(
                    "{} can be read by other users (mode {mode:o}); anyone who reads it can join the grid",
                    path.display()
                )
            })
        };
        #[cfg(not(unix))]
        let warning = {
            let _ = allow_readable;
            None
        };
        let mut text = zeroize::Zeroizing::new(Vec::with_capacity(1025));
        std::io::Read::take(&mut file, 1025).read_to_end(&mut text).map_err(io)?;
        let text = std::str::from_utf8(&text).map_err(|_| malformed("not text".into()))?;
        let secret = Self::parse(text).map_err(malformed)?;
        Ok((secret, warning))
    }

    /// Writes a new random secret to `path`, created with mode 0600; an
    /// existing file is never overwritten.
    ///
    /// # Errors
    /// [`SecretFileError::Exists`], or [`SecretFileError::Io`].
    pub fn create_file(path: &Path) -> std::result::Result<Self, SecretFileError> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => SecretFileError::Exists { path: path.to_path_buf() },
            _ => SecretFileError::Io { path: path.to_path_buf(), source },
        })?;
        let secret = Self::generate();
        writeln!(file, "{}", secret.to_text())
            .and_then(|()| file.sync_all())
            .map_err(|source| SecretFileError::Io { path: path.to_path_buf(), source })?;
        Ok(secret)
    }
}

/// How a party authenticates and protects its connections.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// The cluster secret; `None` runs without authentication (loopback only).
    pub secret: Option<Arc<Secret>>,
    /// Encrypt every byte after the handshake, and refuse peers that do not.
    pub encrypt: bool,
}

impl Security {
    /// Authenticated with `secret`, encrypting when `encrypt`.
    pub fn with_secret(secret: Secret, encrypt: bool) -> Self {
        Self { secret: Some(Arc::new(secret)), encrypt }
    }

    /// Checks the combination.
    ///
    /// # Errors
    /// [`Error::Invalid`] for encryption without a secret (its keys come from it).
    pub fn validate(&self) -> Result<()> {
        if self.encrypt && self.secret.is_none() {
            return Err(Error::Invalid("encryption needs a cluster secret (--secret-file)".into()));
        }
        Ok(())
    }

    fn flags(&self) -> u8 {
        (if self.secret.is_some() { FLAG_SECRET } else { 0 }) | (if self.encrypt { FLAG_ENCRYPT } else { 0 })
    }
}

/// Why a handshake failed, worded from the side that reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Client side: the server did not accept our proof.
    SecretRefused,
    /// Client side: the server holds a secret and we have none.
    SecretRequired,
    /// Client side: we hold a secret and the server does not.
    PeerHasNoSecret,
    /// Client side: the server's proof did not verify.
    BadServerProof,
    /// Client side: the server encrypts and we do not.
    EncryptionRequired,
    /// Client side: we encrypt and the server does not.
    PeerDoesNotEncrypt,
    /// Server side: the client's proof did not verify.
    WrongSecret,
    /// Server side: we hold a secret and the client has none.
    ClientHasNoSecret,
    /// Server side: the client holds a secret and we have none.
    ClientHasSecret,
    /// Server side: we encrypt and the client does not.
    ClientDoesNotEncrypt,
    /// Server side: the client encrypts and we do not.
    ClientEncrypts,
    /// Either side: the bytes are not a septet handshake.
    NotSeptet,
    /// Client side: the server is at its connection limit.
    Busy,
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::SecretRefused => "refused our cluster secret",
            Self::SecretRequired => {
                "requires a cluster secret: pass --secret-file FILE (or set SEPTET_SECRET_FILE) with the grid's secret"
            }
            Self::PeerHasNoSecret => {
                "does not use a cluster secret; refusing to talk to an unauthenticated peer (start it with --secret-file)"
            }
            Self::BadServerProof => "could not prove it holds our cluster secret (a different secret, or an impostor)",
            Self::EncryptionRequired => "requires encryption: pass --encrypt",
            Self::PeerDoesNotEncrypt => "does not encrypt, and we require encryption (start it with --encrypt)",
            Self::WrongSecret => "sent a proof that does not match our cluster secret",
            Self::ClientHasNoSecret => "sent no cluster secret proof",
            Self::ClientHasSecret => "uses a cluster secret and we have none",
            Self::ClientDoesNotEncrypt => "does not encrypt, and we require encryption",
            Self::ClientEncrypts => "wants encryption, and we were not started with --encrypt",
            Self::NotSeptet => "did not speak the septet handshake",
            Self::Busy => "is at its connection limit (--max-connections); try again later",
        })
    }
}

/// ServerHello status codes. Part of the protocol: never renumber.
mod status {
    pub const OK: u8 = 0;
    pub const VERSION: u8 = 1;
    pub const SECRET_REQUIRED: u8 = 2;
    pub const NO_SECRET_HERE: u8 = 3;
    pub const ENCRYPTION_REQUIRED: u8 = 4;
    pub const NO_ENCRYPTION_HERE: u8 = 5;
    pub const REFUSED: u8 = 6;
    pub const BUSY: u8 = 7;
}

/// The hello a server at its connection cap sends instead of serving: the
/// client reports [`HandshakeFailure::Busy`] rather than a reset connection.
pub(crate) fn busy_hello() -> [u8; HELLO_LEN] {
    Hello::new(status::BUSY, 0).encode()
}

/// One side's hello, as it travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hello {
    version: u32,
    /// The client's role, or the server's status.
    code: u8,
    flags: u8,
    nonce: [u8; NONCE_LEN],
}

impl Hello {
    fn new(code: u8, flags: u8) -> Self {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce);
        Self { version: PROTOCOL_VERSION, code, flags, nonce }
    }

    fn encode(&self) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4..8].copy_from_slice(&self.version.to_le_bytes());
        out[8] = self.code;
        out[9] = self.flags;
        out[12..].copy_from_slice(&self.nonce);
        out
    }

    fn decode(bytes: &[u8; HELLO_LEN]) -> std::result::Result<Self, HandshakeFailure> {
        if bytes[..4] != MAGIC {
            return Err(HandshakeFailure::NotSeptet);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[12..]);
        let version = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        Ok(Self { version, code: bytes[8], flags: bytes[9], nonce })
    }
}

fn role_code(role: Role) -> u8 {
    match role {
        Role::Worker => 1,
        Role::Client => 2,
    }
}

fn role_from(code: u8) -> Option<Role> {
    match code {
        1 => Some(Role::Worker),
        2 => Some(Role::Client),
        _ => None,
    }
}

fn proof(secret: &Secret, label: &[u8], transcript: &[u8]) -> hmac::Tag {
    let key = hmac::Key::new(hmac::HMAC_SHA256, &secret.0);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(label);
    ctx.update(transcript);
    ctx.sign()
}

fn verify_proof(secret: &Secret, label: &[u8], transcript: &[u8], claimed: &[u8]) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, &secret.0);
    let mut msg = Vec::with_capacity(label.len() + transcript.len());
    msg.extend_from_slice(label);
    msg.extend_from_slice(transcript);
    hmac::verify(&key, &msg, claimed).is_ok()
}

/// A fresh X25519 key pair for one handshake: its private half and its
/// public half as sent.
fn ephemeral() -> (agreement::EphemeralPrivateKey, [u8; EPHEMERAL_LEN]) {
    let rng = SystemRandom::new();
    let private = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng)
        .expect("the operating system's random source failed");
    let mut public = [0u8; EPHEMERAL_LEN];
    public.copy_from_slice(private.compute_public_key().expect("X25519 has a public key").as_ref());
    (private, public)
}

/// The X25519 shared secret of our `private` key and the peer's `public`
/// one; `None` for a public key X25519 refuses (all zeros, low order).
fn shared_secret(private: agreement::EphemeralPrivateKey, public: &[u8]) -> Option<[u8; 32]> {
    let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, public);
    agreement::agree_ephemeral(private, &peer, |shared| {
        let mut out = [0u8; 32];
        out.copy_from_slice(shared);
        out
    })
    .ok()
}

/// One direction's traffic secret: its key now, and the next.
struct Traffic(hkdf::Prk);

impl Traffic {
    fn key(&self) -> LessSafeKey {
        let okm =
            self.0.expand(&[KEY_LABEL], &AES_128_GCM).expect("AES-128-GCM's key length is a valid HKDF output length");
        LessSafeKey::new(UnboundKey::from(okm))
    }

    fn next(&self) -> Self {
        Self(hkdf::Prk::from(
            self.0.expand(&[NEXT_LABEL], hkdf::HKDF_SHA256).expect("SHA-256's length is a valid HKDF output length"),
        ))
    }
}

/// The two directions' traffic secrets of one connection, as TLS 1.3's
/// psk_dhe_ke does it: HKDF-SHA256 over the cluster secret *and* the
/// connection's X25519 shared secret, salted with the whole transcript
/// (hellos and both ephemeral keys). Recorded traffic stays sealed even
/// to someone who later steals the cluster secret: the ephemeral private
/// keys never leave memory and are gone once the handshake is over.
fn session_keys(secret: &Secret, shared: &[u8; 32], transcript: &[u8]) -> (Traffic, Traffic) {
    let mut ikm = [0u8; SECRET_LEN + 32];
    ikm[..SECRET_LEN].copy_from_slice(&secret.0);
    ikm[SECRET_LEN..].copy_from_slice(shared);
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, transcript).extract(&ikm);
    ikm.fill(0);
    let direction = |label: &[u8]| {
        Traffic(hkdf::Prk::from(
            prk.expand(&[label], hkdf::HKDF_SHA256).expect("SHA-256's length is a valid HKDF output length"),
        ))
    };
    (direction(KEY_C2S), direction(KEY_S2C))
}

/// What a completed handshake yields: the client's role (on the server
/// side) and, when encrypting, the cipher for each direction.
pub(crate) struct Established {
    pub(crate) role: Role,
    pub(crate) cipher: Option<(Sealer, Opener)>,
}

fn handshake_error(peer: String, failure: HandshakeFailure) -> Error {
    Error::Handshake { peer, failure }
}

async fn read_fixed<S: AsyncRead + Unpin, const N: usize>(stream: &mut S) -> Result<[u8; N]> {
    let mut buf = [0u8; N];
    match stream.read_exact(&mut buf).await {
        Ok(_) => Ok(buf),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Error::Closed("the handshake")),
        Err(e) => Err(e.into()),
    }
}

/// The connecting side of the handshake. `peer` names the server in errors
/// ("the tracker at 10.0.0.1:7700").
pub(crate) async fn client<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    role: Role,
    security: &Security,
    peer: &str,
) -> Result<Established> {
    let fail = |failure| handshake_error(peer.to_string(), failure);
    let ours = Hello::new(role_code(role), security.flags());
    let sent = ours.encode();
    stream.write_all(&sent).await?;
    stream.flush().await?;
    let got: [u8; HELLO_LEN] = read_fixed(stream).await?;
    let theirs = Hello::decode(&got).map_err(fail)?;
    if theirs.version != PROTOCOL_VERSION {
        return Err(Error::VersionMismatch { ours: PROTOCOL_VERSION, theirs: theirs.version });
    }
    if theirs.code == status::BUSY {
        return Err(fail(HandshakeFailure::Busy));
    }
    let their_secret = theirs.flags & FLAG_SECRET != 0;
    let their_encrypt = theirs.flags & FLAG_ENCRYPT != 0;
    // Our own view first: it names the cause from our side.
    match (security.secret.is_some(), their_secret) {
        (false, true) => return Err(fail(HandshakeFailure::SecretRequired)),
        (true, false) => return Err(fail(HandshakeFailure::PeerHasNoSecret)),
        _ => {}
    }
    match (security.encrypt, their_encrypt) {
        (false, true) => return Err(fail(HandshakeFailure::EncryptionRequired)),
        (true, false) => return Err(fail(HandshakeFailure::PeerDoesNotEncrypt)),
        _ => {}
    }
    if theirs.code != status::OK {
        return Err(fail(HandshakeFailure::NotSeptet));
    }
    let Some(secret) = &security.secret else { return Ok(Established { role, cipher: None }) };
    let mut transcript = Vec::with_capacity(2 * HELLO_LEN + 2 * EPHEMERAL_LEN);
    transcript.extend_from_slice(&sent);
    transcript.extend_from_slice(&got);
    // With encryption, our ephemeral key goes with our proof, under it.
    let ours = security.encrypt.then(ephemeral);
    if let Some((_, public)) = &ours {
        transcript.extend_from_slice(public);
    }
    let mut said = proof(secret, CLIENT_PROOF, &transcript).as_ref().to_vec();
    if let Some((_, public)) = &ours {
        said.extend_from_slice(public);
    }
    stream.write_all(&said).await?;
    stream.flush().await?;
    let finish: [u8; 1 + PROOF_LEN] = match read_fixed(stream).await {
        // A server that refuses us may close before we read its answer.
        Err(Error::Closed(_)) => return Err(fail(HandshakeFailure::SecretRefused)),
        other => other?,
    };
    if finish[0] != status::OK {
        return Err(fail(HandshakeFailure::SecretRefused));
    }
    let Some((private, _)) = ours else {
        if !verify_proof(secret, SERVER_PROOF, &transcript, &finish[1..]) {
            return Err(fail(HandshakeFailure::BadServerProof));
        }
        return Ok(Established { role, cipher: None });
    };
    let theirs: [u8; EPHEMERAL_LEN] = read_fixed(stream).await?;
    transcript.extend_from_slice(&theirs);
    if !verify_proof(secret, SERVER_PROOF, &transcript, &finish[1..]) {
        return Err(fail(HandshakeFailure::BadServerProof));
    }
    let shared = shared_secret(private, &theirs).ok_or_else(|| fail(HandshakeFailure::BadServerProof))?;
    let (c2s, s2c) = session_keys(secret, &shared, &transcript);
    Ok(Established { role, cipher: Some((Sealer::new(c2s), Opener::new(s2c))) })
}

/// The accepting side of the handshake. `peer` names the client in errors.
pub(crate) async fn server<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    security: &Security,
    peer: &str,
) -> Result<Established> {
    let fail = |failure| handshake_error(peer.to_string(), failure);
    let got: [u8; HELLO_LEN] = read_fixed(stream).await?;
    let theirs = Hello::decode(&got).map_err(fail)?;
    let their_secret = theirs.flags & FLAG_SECRET != 0;
    let their_encrypt = theirs.flags & FLAG_ENCRYPT != 0;
    let (code, failure) = if theirs.version != PROTOCOL_VERSION {
        (status::VERSION, None)
    } else {
        match (security.secret.is_some(), their_secret, security.encrypt, their_encrypt) {
            (true, false, ..) => (status::SECRET_REQUIRED, Some(HandshakeFailure::ClientHasNoSecret)),
            (false, true, ..) => (status::NO_SECRET_HERE, Some(HandshakeFailure::ClientHasSecret)),
            (_, _, true, false) => (status::ENCRYPTION_REQUIRED, Some(HandshakeFailure::ClientDoesNotEncrypt)),
            (_, _, false, true) => (status::NO_ENCRYPTION_HERE, Some(HandshakeFailure::ClientEncrypts)),
            _ => (status::OK, None),
        }
    };
    let ours = Hello::new(code, security.flags());
    let sent = ours.encode();
    stream.write_all(&sent).await?;
    stream.flush().await?;
    if theirs.version != PROTOCOL_VERSION {
        return Err(Error::VersionMismatch { ours: PROTOCOL_VERSION, theirs: theirs.version });
    }
    if let Some(failure) = failure {
        return Err(fail(failure));
    }
    let role = role_from(theirs.code).ok_or_else(|| fail(HandshakeFailure::NotSeptet))?;
    let Some(secret) = &security.secret else { return Ok(Established { role, cipher: None }) };
    let mut transcript = Vec::with_capacity(2 * HELLO_LEN + 2 * EPHEMERAL_LEN);
    transcript.extend_from_slice(&got);
    transcript.extend_from_slice(&sent);
    let claimed: [u8; PROOF_LEN] = read_fixed(stream).await?;
    // With encryption the client's ephemeral key follows its proof, which covers it.
    if security.encrypt {
        let theirs: [u8; EPHEMERAL_LEN] = read_fixed(stream).await?;
        transcript.extend_from_slice(&theirs);
    }
    if !verify_proof(secret, CLIENT_PROOF, &transcript, &claimed) {
        let mut refusal = [0u8; 1 + PROOF_LEN];
        refusal[0] = status::REFUSED;
        let _ = stream.write_all(&refusal).await;
        let _ = stream.flush().await;
        return Err(fail(HandshakeFailure::WrongSecret));
    }
    let ours = security.encrypt.then(ephemeral);
    if let Some((_, public)) = &ours {
        transcript.extend_from_slice(public);
    }
    let mut finish = vec![status::OK];
    finish.extend_from_slice(proof(secret, SERVER_PROOF, &transcript).as_ref());
    if let Some((_, public)) = &ours {
        finish.extend_from_slice(public);
    }
    stream.write_all(&finish).await?;
    stream.flush().await?;
    let Some((private, _)) = ours else { return Ok(Established { role, cipher: None }) };
    let client_public = &transcript[2 * HELLO_LEN..2 * HELLO_LEN + EPHEMERAL_LEN];
    let shared = shared_secret(private, client_public).ok_or_else(|| fail(HandshakeFailure::WrongSecret))?;
    let (c2s, s2c) = session_keys(secret, &shared, &transcript);
    Ok(Established { role, cipher: Some((Sealer::new(s2c), Opener::new(c2s))) })
}

fn record_nonce(seq: u64) -> Nonce {
    let mut nonce = [0u8; aead::NONCE_LEN];
    nonce[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(nonce)
}

/// Seals the records one direction of a connection sends. After
/// [`REKEY_RECORDS`] records under a key, both ends move to the next
/// (derived from the traffic secret, which then replaces itself): no
/// message is needed, and an old key is forgotten.
pub(crate) struct Sealer {
    traffic: Traffic,
    key: LessSafeKey,
    seq: u64,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer").field("seq", &self.seq).finish_non_exhaustive()
    }
}

impl Sealer {
    fn new(traffic: Traffic) -> Self {
        Self { key: traffic.key(), traffic, seq: 0 }
    }

    /// The next key, once this one sealed its share.
    fn rekey_if_due(&mut self) {
        if self.seq == REKEY_RECORDS {
            self.traffic = self.traffic.next();
            self.key = self.traffic.key();
            self.seq = 0;
        }
    }

    /// Seals the close record in place into `record` (cleared first): a
    /// length field of [`CLOSE_RECORD`] and a tag over nothing.
    pub(crate) fn seal_close(&mut self, record: &mut Vec<u8>) -> Result<()> {
        self.rekey_if_due();
        record.clear();
        let header = CLOSE_RECORD.to_le_bytes();
        record.extend_from_slice(&header);
        let seq = self.seq;
        self.seq += 1;
        let tag = self
            .key
            .seal_in_place_separate_tag(record_nonce(seq), Aad::from(header), &mut [])
            .map_err(|_| Error::Invalid("sealing a record failed".into()))?;
        record.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Seals `record` = length field (filled in here) and plaintext, in place,
    /// and appends the tag.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the record is empty or too large, or after
    /// 2⁶⁴ records under one key.
    pub(crate) fn seal(&mut self, record: &mut Vec<u8>) -> Result<()> {
        let len = record.len().saturating_sub(RECORD_HEADER);
        if len == 0 || len > MAX_RECORD {
            return Err(Error::Invalid(format!("a record of {len} bytes")));
        }
        let header = (len as u32).to_le_bytes();
        record[..RECORD_HEADER].copy_from_slice(&header);
        self.rekey_if_due();
        let seq = self.seq;
        self.seq += 1;
        let tag = self
            .key
            .seal_in_place_separate_tag(record_nonce(seq), Aad::from(header), &mut record[RECORD_HEADER..])
            .map_err(|_| Error::Invalid("sealing a record failed".into()))?;
        record.extend_from_slice(tag.as_ref());
        Ok(())
    }
}

/// Opens the records one direction of a connection receives (moving to
/// the next key as the [`Sealer`] does).
pub(crate) struct Opener {
    traffic: Traffic,
    key: LessSafeKey,
    seq: u64,
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener").field("seq", &self.seq).finish_non_exhaustive()
    }
}

impl Opener {
    fn new(traffic: Traffic) -> Self {
        Self { key: traffic.key(), traffic, seq: 0 }
    }

    /// The plaintext length a record header declares: 0 for the close record.
    ///
    /// # Errors
    /// [`Error::BadFrame`] for 0 or more than [`MAX_RECORD`] (checked before
    /// anything is allocated for it).
    pub(crate) fn record_len(header: [u8; RECORD_HEADER]) -> Result<usize> {
        let len = u32::from_le_bytes(header);
        if len == CLOSE_RECORD {
            return Ok(0);
        }
        let len = len as usize;
        if len == 0 || len > MAX_RECORD {
            return Err(Error::BadFrame(format!("an encrypted record of {len} bytes (at most {MAX_RECORD})")));
        }
        Ok(len)
    }

    /// Opens one record in place: `data` is its ciphertext, plaintext after.
    ///
    /// # Errors
    /// [`Error::BadFrame`] when the record does not authenticate (tampered,
    /// reordered, replayed, or sealed under another key).
    pub(crate) fn open(&mut self, header: [u8; RECORD_HEADER], data: &mut [u8], tag: &[u8]) -> Result<()> {
        let bad = || Error::BadFrame("an encrypted record failed authentication".into());
        let tag = aead::Tag::try_from(tag).map_err(|_| bad())?;
        if self.seq == REKEY_RECORDS {
            self.traffic = self.traffic.next();
            self.key = self.traffic.key();
            self.seq = 0;
        }
        let seq = self.seq;
        self.seq += 1;
        self.key.open_in_place_separate_tag(record_nonce(seq), Aad::from(header), tag, data, 0..).map_err(|_| bad())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    fn secret(byte: u8) -> Security {
        Security { secret: Some(Arc::new(Secret([byte; SECRET_LEN]))), encrypt: false }
    }

    async fn pair(client_sec: Security, server_sec: Security) -> (Result<Established>, Result<Established>) {
        let (mut a, mut b) = duplex(4096);
        let server = tokio::spawn(async move { server(&mut b, &server_sec, "client").await });
        let client = client(&mut a, Role::Client, &client_sec, "the server").await;
        drop(a);
        (client, server.await.unwrap())
    }

    fn failure(r: &Result<Established>) -> Option<HandshakeFailure> {
        match r {
            Err(Error::Handshake { failure, .. }) => Some(*failure),
            _ => None,
        }
    }

    #[tokio::test]
    async fn the_right_secret_is_accepted_both_ways_and_keys_agree() {
        let mut enc = secret(7);
        enc.encrypt = true;
        let (c, s) = pair(enc.clone(), enc).await;
        let (c, s) = (c.unwrap(), s.unwrap());
        assert_eq!(s.role, Role::Client);
        let (mut c_seal, mut c_open) = c.cipher.unwrap();
        let (mut s_seal, mut s_open) = s.cipher.unwrap();
        for (seal, open) in [(&mut c_seal, &mut s_open), (&mut s_seal, &mut c_open)] {
            let mut rec = vec![0u8; RECORD_HEADER];
            rec.extend_from_slice(b"hello grid");
            seal.seal(&mut rec).unwrap();
            let header: [u8; 4] = rec[..4].try_into().unwrap();
            let len = Opener::record_len(header).unwrap();
            let (data, tag) = rec[4..].split_at_mut(len);
            open.open(header, data, tag).unwrap();
            assert_eq!(data, b"hello grid");
        }
        // No secret on either side: a plain, unauthenticated connection (loopback use).
        let (c, s) = pair(Security::default(), Security::default()).await;
        assert!(c.unwrap().cipher.is_none() && s.unwrap().cipher.is_none());
    }

    #[tokio::test]
    async fn a_wrong_or_missing_secret_is_refused_with_its_cause_on_each_side() {
        let (c, s) = pair(secret(1), secret(2)).await;
        assert_eq!(
            (failure(&c), failure(&s)),
            (Some(HandshakeFailure::SecretRefused), Some(HandshakeFailure::WrongSecret))
        );
        let (c, s) = pair(Security::default(), secret(2)).await;
        assert_eq!(failure(&c), Some(HandshakeFailure::SecretRequired));
        assert_eq!(failure(&s), Some(HandshakeFailure::ClientHasNoSecret));
        let (c, s) = pair(secret(1), Security::default()).await;
        assert_eq!(failure(&c), Some(HandshakeFailure::PeerHasNoSecret));
        assert_eq!(failure(&s), Some(HandshakeFailure::ClientHasSecret));
        let mut enc = secret(1);
        enc.encrypt = true;
        let (c, s) = pair(secret(1), enc.clone()).await;
        assert_eq!(failure(&c), Some(HandshakeFailure::EncryptionRequired));
        assert_eq!(failure(&s), Some(HandshakeFailure::ClientDoesNotEncrypt));
        let (c, s) = pair(enc, secret(1)).await;
        assert_eq!(failure(&c), Some(HandshakeFailure::PeerDoesNotEncrypt));
        assert_eq!(failure(&s), Some(HandshakeFailure::ClientEncrypts));
        let msg =
            Error::Handshake { peer: "the tracker at 10.0.0.1:7700".into(), failure: HandshakeFailure::SecretRefused };
        assert_eq!(msg.to_string(), "the tracker at 10.0.0.1:7700 refused our cluster secret");
    }

    /// Records a whole successful client side, then replays it to a new
    /// server: the server's fresh nonce makes the old proof worthless.
    #[tokio::test]
    async fn a_recorded_handshake_cannot_be_replayed() {
        let sec = secret(9);
        let (mut a, mut b) = duplex(4096);
        let s = sec.clone();
        let server_task = tokio::spawn(async move { server(&mut b, &s, "client").await.map(|e| e.role) });
        let client_hello = Hello::new(role_code(Role::Client), sec.flags()).encode();
        a.write_all(&client_hello).await.unwrap();
        let server_hello: [u8; HELLO_LEN] = read_fixed(&mut a).await.unwrap();
        let mut transcript = client_hello.to_vec();
        transcript.extend_from_slice(&server_hello);
        let recorded_proof = proof(sec.secret.as_ref().unwrap(), CLIENT_PROOF, &transcript);
        a.write_all(recorded_proof.as_ref()).await.unwrap();
        assert_eq!(server_task.await.unwrap().unwrap(), Role::Client);

        // The replay: same hello, same proof, a new server.
        let (mut a, mut b) = duplex(4096);
        let s = sec.clone();
        let server_task = tokio::spawn(async move { server(&mut b, &s, "client").await.map(|e| e.role) });
        a.write_all(&client_hello).await.unwrap();
        let fresh: [u8; HELLO_LEN] = read_fixed(&mut a).await.unwrap();
        assert_ne!(fresh[12..], server_hello[12..], "the server's nonce is fresh");
        a.write_all(recorded_proof.as_ref()).await.unwrap();
        let refused = server_task.await.unwrap();
        assert!(matches!(refused, Err(Error::Handshake { failure: HandshakeFailure::WrongSecret, .. })));
    }

    /// An attacker without the secret talks to a server as a client and
    /// tries to make the server's own answers serve as its proof: the
    /// server never sends anything keyed before the client proved itself,
    /// and a server-labelled proof is not a client proof.
    #[tokio::test]
    async fn a_servers_proof_reflected_back_is_refused() {
        let sec = secret(5);
        let k = sec.secret.clone().unwrap();
        let (mut a, mut b) = duplex(4096);
        let s = sec.clone();
        let server_task = tokio::spawn(async move { server(&mut b, &s, "client").await.map(|e| e.role) });
        let client_hello = Hello::new(role_code(Role::Client), sec.flags()).encode();
        a.write_all(&client_hello).await.unwrap();
        let server_hello: [u8; HELLO_LEN] = read_fixed(&mut a).await.unwrap();
        let mut transcript = client_hello.to_vec();
        transcript.extend_from_slice(&server_hello);
        // Best reflection an attacker could hope for: the server's own
        // proof for this very transcript (here computed with the key, which
        // the attacker does not even have), sent back as the client's.
        let reflected = proof(&k, SERVER_PROOF, &transcript);
        a.write_all(reflected.as_ref()).await.unwrap();
        let refused = server_task.await.unwrap();
        assert!(matches!(refused, Err(Error::Handshake { failure: HandshakeFailure::WrongSecret, .. })));
        // And the client rejects a server that echoes the client's own proof.
        let (mut a, mut b) = duplex(4096);
        let c = sec.clone();
        let client_task =
            tokio::spawn(async move { client(&mut a, Role::Client, &c, "the server").await.map(|e| e.role) });
        let got: [u8; HELLO_LEN] = read_fixed(&mut b).await.unwrap();
        let ours = Hello::new(status::OK, sec.flags()).encode();
        b.write_all(&ours).await.unwrap();
        let their_proof: [u8; PROOF_LEN] = read_fixed(&mut b).await.unwrap();
        let mut echo = vec![status::OK];
        echo.extend_from_slice(&their_proof);
        b.write_all(&echo).await.unwrap();
        let mut transcript = got.to_vec();
        transcript.extend_from_slice(&ours);
        assert!(verify_proof(&k, CLIENT_PROOF, &transcript, &their_proof));
        let refused = client_task.await.unwrap();
        assert!(matches!(refused, Err(Error::Handshake { failure: HandshakeFailure::BadServerProof, .. })));
    }

    #[tokio::test]
    async fn truncated_or_foreign_handshakes_end_in_errors_not_hangs() {
        let sec = secret(3);
        let hello = Hello::new(role_code(Role::Client), sec.flags()).encode();
        for cut in 0..HELLO_LEN {
            let (mut a, mut b) = duplex(4096);
            a.write_all(&hello[..cut]).await.unwrap();
            drop(a);
            assert!(matches!(server(&mut b, &sec, "c").await, Err(Error::Closed(_))), "cut at {cut}");
        }
        // Hello complete, proof cut short.
        let (mut a, mut b) = duplex(4096);
        a.write_all(&hello).await.unwrap();
        a.write_all(&[0u8; PROOF_LEN - 1]).await.unwrap();
        let s = sec.clone();
        let server_task = tokio::spawn(async move { server(&mut b, &s, "c").await.map(|e| e.role) });
        let _: [u8; HELLO_LEN] = read_fixed(&mut a).await.unwrap();
        drop(a);
        assert!(matches!(server_task.await.unwrap(), Err(Error::Closed(_))));
        // Not septet at all (an HTTP request).
        let (mut a, mut b) = duplex(4096);
        a.write_all(&b"GET /metrics HTTP/1.1\r\nHost: tracker.example:7700\r\n\r\n"[..HELLO_LEN]).await.unwrap();
        assert!(matches!(
            server(&mut b, &sec, "c").await,
            Err(Error::Handshake { failure: HandshakeFailure::NotSeptet, .. })
        ));
    }

    #[test]
    fn records_that_are_tampered_reordered_or_oversized_do_not_open() {
        let k = Secret([4; SECRET_LEN]);
        let dh = [9u8; 32];
        let (c2s, _) = session_keys(&k, &dh, b"transcript");
        let (c2s_again, _) = session_keys(&k, &dh, b"transcript");
        let (other, _) = session_keys(&k, &dh, b"another transcript");
        let (mut seal, mut open) = (Sealer::new(c2s), Opener::new(c2s_again));
        let mut records = Vec::new();
        for text in [&b"first"[..], b"second"] {
            let mut rec = vec![0u8; RECORD_HEADER];
            rec.extend_from_slice(text);
            seal.seal(&mut rec).unwrap();
            records.push(rec);
        }
        let try_open = |open: &mut Opener, rec: &[u8]| {
            let mut rec = rec.to_vec();
            let header: [u8; 4] = rec[..4].try_into().unwrap();
            let len = Opener::record_len(header)?;
            let (data, tag) = rec[4..].split_at_mut(len);
            open.open(header, data, tag)
        };
        // Out of order: the second record under the first's counter.
        assert!(try_open(&mut open, &records[1]).is_err());
        let mut open = Opener::new(session_keys(&k, &dh, b"transcript").0);
        let mut flipped = records[0].clone();
        flipped[6] ^= 1;
        assert!(try_open(&mut open, &flipped).is_err());
        let mut open = Opener::new(other);
        assert!(try_open(&mut open, &records[0]).is_err());
        let mut open = Opener::new(session_keys(&k, &dh, b"transcript").0);
        assert!(try_open(&mut open, &records[0]).is_ok());
        assert!(try_open(&mut open, &records[1]).is_ok());
        assert!(Opener::record_len(((MAX_RECORD + 1) as u32).to_le_bytes()).is_err());
        assert!(Opener::record_len([0; 4]).is_err());
    }

    /// Records both directions of an encrypted handshake, as an on-path
    /// attacker would, then hands the attacker the cluster secret (stolen
    /// later): every key it can derive from what it has — the secret, the
    /// whole transcript with both ephemeral public keys — fails to open the
    /// connection's records; only the ephemeral private keys, gone with the
    /// handshake, would. Two connections never share keys.
    #[tokio::test]
    async fn a_secret_stolen_later_does_not_open_recorded_traffic() {
        let mut enc = secret(6);
        enc.encrypt = true;
        let (mut a, mut b) = duplex(4096);
        let s = enc.clone();
        let server_task = tokio::spawn(async move {
            let mut tap = Vec::new();
            let got = server(&mut Tap { inner: &mut b, log: &mut tap }, &s, "client").await;
            (got, tap)
        });
        let mut from_server = Vec::new();
        let client =
            client(&mut Tap { inner: &mut a, log: &mut from_server }, Role::Client, &enc, "the server").await.unwrap();
        let (server_side, from_client) = server_task.await.unwrap();
        server_side.unwrap();
        let (mut seal, _) = client.cipher.unwrap();
        let mut rec = vec![0u8; RECORD_HEADER];
        rec.extend_from_slice(b"the product M3");
        seal.seal(&mut rec).unwrap();
        // What the attacker recorded: both hellos, both proofs, both public
        // keys — the whole transcript the keys are salted with.
        assert_eq!(from_client.len(), HELLO_LEN + PROOF_LEN + EPHEMERAL_LEN);
        assert_eq!(from_server.len(), HELLO_LEN + 1 + PROOF_LEN + EPHEMERAL_LEN);
        let transcript = [
            &from_client[..HELLO_LEN],
            &from_server[..HELLO_LEN],
            &from_client[HELLO_LEN + PROOF_LEN..],
            &from_server[HELLO_LEN + 1 + PROOF_LEN..],
        ]
        .concat();
        let k = enc.secret.as_ref().unwrap();
        let try_open = |traffic: Traffic| {
            let mut rec = rec.clone();
            let header: [u8; 4] = rec[..4].try_into().unwrap();
            let len = Opener::record_len(header).unwrap();
            let (data, tag) = rec[4..].split_at_mut(len);
            Opener::new(traffic).open(header, data, tag).is_ok()
        };
        // With the secret and the real transcript, any guess at the shared
        // secret opens nothing.
        for guess in [[0u8; 32], [1u8; 32]] {
            assert!(!try_open(session_keys(k, &guess, &transcript).0));
        }
        // Two connections under the same secret have different keys.
        let (mut a2, mut b2) = duplex(4096);
        let s = enc.clone();
        let other = tokio::spawn(async move { server(&mut b2, &s, "client").await });
        let second = super::client(&mut a2, Role::Client, &enc, "the server").await.unwrap();
        other.await.unwrap().unwrap();
        let (mut seal2, _) = second.cipher.unwrap();
        let mut rec2 = vec![0u8; RECORD_HEADER];
        rec2.extend_from_slice(b"the product M3");
        seal2.seal(&mut rec2).unwrap();
        assert_ne!(rec, rec2);
    }

    /// Records the bytes read through it.
    struct Tap<'a, S> {
        inner: &'a mut S,
        log: &'a mut Vec<u8>,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for Tap<'_, S> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let before = buf.filled().len();
            let this = &mut *self;
            let polled = std::pin::Pin::new(&mut *this.inner).poll_read(cx, buf);
            this.log.extend_from_slice(&buf.filled()[before..]);
            polled
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<'_, S> {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut *self.inner).poll_write(cx, buf)
        }
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut *self.inner).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut *self.inner).poll_shutdown(cx)
        }
    }

    /// Both ends move to a new key every [`REKEY_RECORDS`] records, in
    /// step, without a message; a key's successor seals differently.
    #[test]
    fn keys_move_on_in_step_after_their_share_of_records() {
        let k = Secret([2; SECRET_LEN]);
        let (c2s, _) = session_keys(&k, &[3; 32], b"t");
        let (c2s_again, _) = session_keys(&k, &[3; 32], b"t");
        let first_key = c2s.key();
        let next_key = c2s.next().key();
        let seal_with = |key: &LessSafeKey| {
            let mut data = *b"same";
            let _tag = key.seal_in_place_separate_tag(record_nonce(0), Aad::from([0u8; 4]), &mut data).unwrap();
            data
        };
        assert_ne!(seal_with(&first_key), seal_with(&next_key));
        let (mut seal, mut open) = (Sealer::new(c2s), Opener::new(c2s_again));
        for i in 0..REKEY_RECORDS + 3 {
            let mut rec = vec![0u8; RECORD_HEADER];
            rec.extend_from_slice(&i.to_le_bytes());
            seal.seal(&mut rec).unwrap();
            let header: [u8; 4] = rec[..4].try_into().unwrap();
            let len = Opener::record_len(header).unwrap();
            let (data, tag) = rec[4..].split_at_mut(len);
            open.open(header, data, tag).unwrap_or_else(|e| panic!("record {i}: {e}"));
            assert_eq!(data, &i.to_le_bytes());
        }
        assert_eq!(seal.seq, 3, "the sealer is on its second key");
        // The close record authenticates like any other.
        let mut close = Vec::new();
        seal.seal_close(&mut close).unwrap();
        let header: [u8; 4] = close[..4].try_into().unwrap();
        assert_eq!(Opener::record_len(header).unwrap(), 0);
        open.open(header, &mut [], &close[4..]).unwrap();
        let (s2c, s2c_again) = (session_keys(&k, &[3; 32], b"t").1, session_keys(&k, &[3; 32], b"t").1);
        let (mut seal, mut open) = (Sealer::new(s2c), Opener::new(s2c_again));
        seal.seal_close(&mut close).unwrap();
        close[5] ^= 1;
        assert!(open.open(header, &mut [], &close[4..]).is_err(), "a forged close record");
    }

    #[test]
    fn secret_files_are_created_0600_never_overwritten_and_parsed_back() {
        let dir = std::env::temp_dir().join(format!("septet-secret-test-{}", random_token(8)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("grid.secret");
        let made = Secret::create_file(&path).unwrap();
        let (loaded, warning) = Secret::load(&path, false).unwrap();
        assert_eq!(loaded.0, made.0);
        assert!(warning.is_none());
        assert!(matches!(Secret::create_file(&path), Err(SecretFileError::Exists { .. })));
        assert_eq!(Secret::load(&path, false).unwrap().0 .0, made.0, "not overwritten");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
            let refused = Secret::load(&path, false).unwrap_err();
            assert!(matches!(refused, SecretFileError::Readable { mode: 0o640, .. }));
            assert!(refused.to_string().contains("chmod 600"), "{refused}");
            assert!(Secret::load(&path, true).unwrap().1.unwrap().contains("can be read by other users"));
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            // A directory is not a secret file.
            assert!(matches!(Secret::load(&dir, true), Err(SecretFileError::Malformed { .. })));
        }
        // Hex digits only: from_str_radix alone would take a sign.
        let signed = format!("+f{}", "0".repeat(62));
        assert_eq!(Secret::parse(&signed).unwrap_err(), "expected hex digits only");
        std::fs::write(&path, "not a secret").unwrap();
        assert!(matches!(Secret::load(&path, false), Err(SecretFileError::Malformed { .. })));
        assert!(format!("{made:?}").contains("redacted"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
