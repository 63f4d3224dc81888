//! What a peer tells its user, as INTERFACE.md fixes it: the binary prints these as JSON lines
//! (`--json`) or as text.

use conclave_shared::wire::peer::WireRole;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Admitted to the group, or founded it.
    Joined {
        name: String,
        role: WireRole,
        leader: String,
        term: u64,
        members: u32,
        height: u64,
    },
    Leader {
        name: String,
        term: u64,
    },
    MemberJoined {
        name: String,
        role: WireRole,
        height: u64,
    },
    MemberLeft {
        name: String,
        role: WireRole,
        height: u64,
    },
    RoleChanged {
        name: String,
        role: WireRole,
        height: u64,
    },
    KeyRotated {
        epoch: u64,
        height: u64,
    },
    Record {
        height: u64,
        author: String,
        seq: u64,
        text: Option<String>,
        own: bool,
    },
    Committed {
        seq: u64,
        height: u64,
        duplicate: bool,
    },
    Refused {
        seq: u64,
        reason: String,
    },
    Head {
        height: u64,
        hash: String,
    },
    /// This member's chain was replaced by a snapshot (verified under the root key) up to
    /// `height`, rather than applied block by block: no `record` or membership events are
    /// printed for the blocks it brought.
    SnapshotInstalled {
        height: u64,
    },
    /// The answer to a console question (`/members`, `/leader`, `/chain`, `/verify`,
    /// `/status`, `/help`): `command` is its name without the slash, `lines` the text.
    Info {
        command: String,
        lines: Vec<String>,
    },
    /// `peer` signed a head whose hash at `height` (`theirs`) is not this member's block hash
    /// there (`ours`); said once per member until their heads agree again.
    HeadMismatch {
        peer: String,
        height: u64,
        ours: String,
        theirs: String,
    },
    Error {
        message: String,
    },
}
