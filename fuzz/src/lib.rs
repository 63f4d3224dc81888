//! What each fuzz target does with its input, one `pub fn` per target.
//!
//! The targets in `fuzz_targets/` call these under libFuzzer; `shared/tests/fuzz_corpus.rs`
//! includes this file with `#[path]` and calls them on every corpus file, so a plain
//! `cargo test` on the stable toolchain replays the corpus through the same code.
//!
//! Decoding untrusted bytes must return `Ok` or `Err`, never panic and never allocate beyond
//! its limits. Each function returns whether the input was accepted (something decoded, the
//! chain verified), so the replay test can check that every corpus holds valid inputs too.
//! Where a decoded value has one encoding we also check it round-trips: the canonical chain
//! encoding must give back exactly the input bytes (`encode(decode(b)) == b`, as `codec`
//! promises), and a bincode message must decode again to the same value.
//!
//! The fixtures (`fuzz/fixtures/`) were made once by the ignored test `write_fuzz_seeds` in
//! `shared/tests/fuzz_corpus.rs`: the root public key of a small valid chain, and that chain.

use std::fmt::Debug;
use std::future::Future;
use std::path::Path;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use conclave_shared::cert::{CertBody, Certificate, Revocation, SignedRevocation};
use conclave_shared::chain::{
    self, relink, Block, BlockBody, BlockHeader, BlockKind, RecordBatch, StoredBlock,
};
use conclave_shared::codec::{Canonical, DecodeError, Reader};
use conclave_shared::config::Config;
use conclave_shared::identity::PublicKey;
use conclave_shared::wire::km::{FromKeymanager, ToKeymanager};
use conclave_shared::wire::peer::{FromPeer, Head, ToPeer};
use conclave_shared::wire::proxy::{Announcement, FromProxy, ToProxy};
use conclave_shared::wire::{decode_message, encode_message, read_frame, WireError};

/// The names of the targets, which are also the names of their corpus directories.
pub const TARGETS: [&str; 8] = [
    "frame",
    "msg_km",
    "msg_peer",
    "msg_proxy",
    "block",
    "verify_chain",
    "cert",
    "config",
];

/// The root public key (SPKI DER) of [`FIXTURE_CHAIN`].
const FIXTURE_ROOT: &[u8] = include_bytes!("../fixtures/root.spki.der");
/// A valid chain: its stored blocks' canonical encodings, one after another.
const FIXTURE_CHAIN: &[u8] = include_bytes!("../fixtures/chain.bin");

/// `verify_chain` mode bit: the blocks are picked from the fixture chain by index (and
/// tweaked) rather than decoded from the input.
pub const MODE_PICK: u8 = 1;
/// `verify_chain` mode bit: rewrite heights, links and hashes before verifying, as someone
/// rewriting history would, so that the checks behind the hash check are reached.
pub const MODE_RELINK: u8 = 2;
/// Picked blocks at most; more only repeats the same checks.
const MAX_PICKED_BLOCKS: usize = 64;
/// Frames read from one input at most.
const MAX_FRAMES: usize = 64;

/// The root public key of the fixture chain.
pub fn fixture_root() -> &'static PublicKey {
    static ROOT: OnceLock<PublicKey> = OnceLock::new();
    ROOT.get_or_init(|| {
        PublicKey::from_spki_der(FIXTURE_ROOT)
            .expect("fuzz/fixtures/root.spki.der holds a valid key (see write_fuzz_seeds)")
    })
}

/// The blocks of the fixture chain.
pub fn fixture_chain() -> &'static [StoredBlock] {
    static CHAIN: OnceLock<Vec<StoredBlock>> = OnceLock::new();
    CHAIN.get_or_init(|| {
        let blocks = read_blocks(FIXTURE_CHAIN)
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .expect("fuzz/fixtures/chain.bin decodes (see write_fuzz_seeds)");
        assert!(!blocks.is_empty(), "fuzz/fixtures/chain.bin is empty");
        blocks
    })
}

/// Successive stored blocks, up to and including the first that does not decode.
fn read_blocks(bytes: &[u8]) -> Vec<Result<StoredBlock, DecodeError>> {
    let mut r = Reader::new(bytes);
    let mut out = Vec::new();
    while r.remaining() > 0 {
        let block = StoredBlock::decode_from(&mut r);
        let failed = block.is_err();
        out.push(block);
        if failed {
            break;
        }
    }
    out
}

/// Decodes a canonical value and checks that it has no other encoding.
fn canonical<T: Canonical + Debug>(bytes: &[u8]) -> Option<T> {
    let value = T::from_canonical(bytes).ok()?;
    assert_eq!(
        value.to_canonical(),
        bytes,
        "{value:?} decoded from a non-canonical encoding"
    );
    Some(value)
}

/// Decodes a bincode message and checks that encoding it again gives the same message.
macro_rules! message {
    ($t:ty, $bytes:expr) => {{
        let decoded = decode_message::<$t>($bytes).ok();
        if let Some(m) = &decoded {
            let again = encode_message(m).expect("a decoded message encodes");
            let back = decode_message::<$t>(&again).expect("a re-encoded message decodes");
            assert_eq!(&back, m, "re-encoding changed the message");
        }
        decoded
    }};
}

/// Runs a future that never waits: reading from a slice is always ready.
fn ready<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

/// Reads frames from `stream` until it ends, a frame fails, or [`MAX_FRAMES`]; returns
/// whether a frame decoded.
fn frames(mut stream: &[u8], mut next: impl FnMut(&mut &[u8]) -> Result<bool, WireError>) -> bool {
    for i in 0..MAX_FRAMES {
        if !matches!(next(&mut stream), Ok(true)) {
            return i > 0;
        }
    }
    true
}

/// The first byte picks the message type (its low 7 bits, modulo 6) and the frame limit: the
/// protocol's own below 128, none (so only `MAX_FRAME_BYTES` applies) from 128. The rest is a
/// stream of length-prefixed frames.
pub fn frame(data: &[u8]) -> bool {
    use conclave_shared::wire::{km, peer, proxy};
    let Some((&which, stream)) = data.split_first() else {
        return false;
    };
    let max = |own: usize| if which < 128 { own } else { usize::MAX };
    match (which & 0x7f) % 6 {
        0 => frames(stream, |s| {
            let max = max(km::MAX_REQUEST_BYTES);
            ready(read_frame::<_, ToKeymanager>(s, max)).map(|m| m.is_some())
        }),
        1 => frames(stream, |s| {
            let max = max(km::MAX_RESPONSE_BYTES);
            ready(read_frame::<_, FromKeymanager>(s, max)).map(|m| m.is_some())
        }),
        2 => frames(stream, |s| {
            let max = max(peer::MAX_REQUEST_BYTES);
            ready(read_frame::<_, ToPeer>(s, max)).map(|m| m.is_some())
        }),
        3 => frames(stream, |s| {
            let max = max(peer::MAX_RESPONSE_BYTES);
            ready(read_frame::<_, FromPeer>(s, max)).map(|m| m.is_some())
        }),
        4 => frames(stream, |s| {
            let max = max(proxy::MAX_REQUEST_BYTES);
            ready(read_frame::<_, ToProxy>(s, max)).map(|m| m.is_some())
        }),
        _ => frames(stream, |s| {
            let max = max(proxy::MAX_RESPONSE_BYTES);
            ready(read_frame::<_, FromProxy>(s, max)).map(|m| m.is_some())
        }),
    }
}

/// Both directions of the key-manager protocol.
pub fn msg_km(data: &[u8]) -> bool {
    let to = message!(ToKeymanager, data).is_some();
    let from = message!(FromKeymanager, data).is_some();
    to || from
}

/// Both directions of the member protocol, and the record batch a `Submit` carries.
pub fn msg_peer(data: &[u8]) -> bool {
    let to = message!(ToPeer, data);
    if let Some(ToPeer::Submit { batch }) = &to {
        canonical::<RecordBatch>(batch);
    }
    if let Some(ToPeer::Head(signed)) = &to {
        message!(Head, &signed.bytes);
    }
    let from = message!(FromPeer, data).is_some();
    to.is_some() || from
}

/// Both directions of the proxy protocol, and the announcement a signed one carries.
pub fn msg_proxy(data: &[u8]) -> bool {
    let to = message!(ToProxy, data);
    if let Some(ToProxy::Announce(signed)) = &to {
        message!(Announcement, &signed.bytes);
    }
    let from = message!(FromProxy, data).is_some();
    let announcement = message!(Announcement, data).is_some();
    to.is_some() || from || announcement
}

/// A stored block, a block, a header, and the body layout of every kind.
pub fn block(data: &[u8]) -> bool {
    let mut accepted = canonical::<StoredBlock>(data).is_some();
    accepted |= canonical::<Block>(data).is_some();
    accepted |= canonical::<BlockHeader>(data).is_some();
    for kind in BlockKind::ALL {
        let mut r = Reader::new(data);
        if let Ok(body) = BlockBody::decode_for(kind, &mut r) {
            if r.finish().is_ok() {
                assert_eq!(body.kind(), kind);
                assert_eq!(body.to_canonical(), data, "{kind} body is not canonical");
                accepted = true;
            }
        }
    }
    accepted
}

/// The first byte is a mode ([`MODE_PICK`], [`MODE_RELINK`]). Without `MODE_PICK` the rest
/// is a stream of stored blocks, as a chain file holds them. With it, each byte picks a block
/// of the fixture chain (low 5 bits, modulo its length) and a tweak of its header (high 3
/// bits), so that reordered, repeated, dropped and altered blocks with valid signatures reach
/// the verifier.
pub fn verify_chain(data: &[u8]) -> bool {
    let Some((&mode, rest)) = data.split_first() else {
        return false;
    };
    let mut blocks = if mode & MODE_PICK != 0 {
        let fixture = fixture_chain();
        rest.iter()
            .take(MAX_PICKED_BLOCKS)
            .map(|&b| {
                let mut block = fixture[usize::from(b & 0x1f) % fixture.len()].clone();
                tweak(&mut block.block.header, b >> 5);
                Ok(block)
            })
            .collect()
    } else {
        read_blocks(rest)
    };
    if mode & MODE_RELINK != 0 {
        // Only the last item can be an error (`read_blocks` stops there); it stays last.
        let failed = match blocks.last() {
            Some(Err(_)) => blocks.pop(),
            _ => None,
        };
        let mut decoded: Vec<StoredBlock> = blocks.into_iter().flatten().collect();
        relink(&mut decoded, 0);
        blocks = decoded.into_iter().map(Ok).chain(failed).collect();
    }
    chain::verify_chain(fixture_root(), blocks).is_ok()
}

/// Alters one header field; 0 leaves it alone.
fn tweak(h: &mut BlockHeader, how: u8) {
    match how {
        1 => h.term = h.term.wrapping_add(1),
        2 => h.term = h.term.wrapping_sub(1),
        3 => h.time_ms = 0,
        4 => h.leader ^= 1,
        5 => h.version = h.version.wrapping_add(1),
        6 => {
            let next = BlockKind::ALL
                .into_iter()
                .cycle()
                .skip_while(|k| *k != h.kind)
                .nth(1);
            h.kind = next.unwrap_or(h.kind);
        }
        7 => h.height = h.height.wrapping_add(1),
        _ => {}
    }
}

/// Certificates and revocations, checked against the fixture root; and the input as a
/// public key.
pub fn cert(data: &[u8]) -> bool {
    let root = fixture_root();
    let mut accepted = false;
    if let Some(c) = canonical::<Certificate>(data) {
        let _ = PublicKey::from_spki_der(&c.body.spki_der);
        accepted |= c.verify(root).is_ok();
    }
    if let Some(r) = canonical::<SignedRevocation>(data) {
        accepted |= r.verify(root).is_ok();
    }
    accepted |= canonical::<CertBody>(data).is_some();
    accepted |= canonical::<Revocation>(data).is_some();
    accepted |= PublicKey::from_spki_der(data).is_ok();
    accepted
}

/// `config.yml` text, parsed and validated.
pub fn config(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    Config::from_yaml(&text, Path::new("fuzz/config.yml")).is_ok()
}

/// The function of the target named `name`.
pub fn target(name: &str) -> Option<fn(&[u8]) -> bool> {
    Some(match name {
        "frame" => frame,
        "msg_km" => msg_km,
        "msg_peer" => msg_peer,
        "msg_proxy" => msg_proxy,
        "block" => block,
        "verify_chain" => verify_chain,
        "cert" => cert,
        "config" => config,
        _ => return None,
    })
}
