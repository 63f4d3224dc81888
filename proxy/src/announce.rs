//! Checking a leader's signed announcement against the connection it arrived on.
//!
//! A [`VerifiedAnnouncement`] can only be made by [`VerifiedAnnouncement::check`], so the state
//! rules never see an announcement whose signature, signer or contents were not checked.

use conclave_shared::cert::{validate_name, Role, VerifiedCert};
use conclave_shared::identity::Fingerprint;
use conclave_shared::wire::proxy::{Announcement, Rejection, SignedAnnouncement};

/// A group larger than this is refused: it bounds the proxy's state and its status fan-out.
pub const MAX_MEMBERS: usize = 1024;
/// The longest member or leader address accepted ("host:port").
pub const MAX_ADDR_BYTES: usize = 256;
/// The member roles an announcement may name, as `wire::peer::WireRole` prints them.
const MEMBER_ROLES: [&str; 2] = ["voter", "learner"];

/// Why an announcement is refused before the group rules are even consulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Rejection,
    pub message: String,
}

impl Refusal {
    pub(crate) fn new(reason: Rejection, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// An announcement signed by the key of the member certificate the announcer presented in TLS,
/// naming that member, with bounded, well-formed contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAnnouncement {
    announcement: Announcement,
    fingerprint: Fingerprint,
}

impl VerifiedAnnouncement {
    /// Checks `signed` against `announcer`, the certificate the connection presented (already
    /// verified under the root key by `quic::peer_cert`).
    pub fn check(signed: &SignedAnnouncement, announcer: &VerifiedCert) -> Result<Self, Refusal> {
        if announcer.role() != Role::Member {
            return Err(Refusal::new(
                Rejection::BadSignature,
                format!(
                    "{:?} holds a {} certificate; only members announce",
                    announcer.name(),
                    announcer.role()
                ),
            ));
        }
        let announcement = signed.open(announcer.public_key()).map_err(|_| {
            Refusal::new(
                Rejection::BadSignature,
                format!(
                    "the announcement is not signed by the key of {:?}, whose certificate this \
                     connection presented",
                    announcer.name()
                ),
            )
        })?;
        let fingerprint = announcer.fingerprint();
        if announcement.name != announcer.name() || announcement.node_id != fingerprint.node_id() {
            return Err(Refusal::new(
                Rejection::BadSignature,
                format!(
                    "the announcement names {:?} (node {:016x}) but the certificate is {:?} \
                     (node {:016x})",
                    announcement.name,
                    announcement.node_id,
                    announcer.name(),
                    fingerprint.node_id()
                ),
            ));
        }
        check_contents(&announcement)?;
        Ok(Self {
            announcement,
            fingerprint,
        })
    }

    /// For the state rules' unit tests, which need no keys.
    #[cfg(test)]
    pub(crate) fn for_test(announcement: Announcement, fingerprint: Fingerprint) -> Self {
        Self {
            announcement,
            fingerprint,
        }
    }

    /// For the state rules' unit tests, to shape an announcement after making it.
    #[cfg(test)]
    pub(crate) fn announcement_mut(&mut self) -> &mut Announcement {
        &mut self.announcement
    }

    pub fn announcement(&self) -> &Announcement {
        &self.announcement
    }

    /// The announcer's key fingerprint, from its TLS certificate.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

fn malformed(message: String) -> Refusal {
    Refusal::new(Rejection::BadSignature, message)
}

/// Bounds and shapes the contents, so what the proxy stores and later dials is sane.
fn check_contents(a: &Announcement) -> Result<(), Refusal> {
    check_addr("leader", &a.addr)?;
    if a.members.len() > MAX_MEMBERS {
        return Err(malformed(format!(
            "the announcement lists {} members, more than the {MAX_MEMBERS} a proxy keeps",
            a.members.len()
        )));
    }
    for (i, m) in a.members.iter().enumerate() {
        validate_name(&m.name).map_err(|e| malformed(format!("member {i} has a bad name: {e}")))?;
        check_addr(&m.name, &m.addr)?;
        if !MEMBER_ROLES.contains(&m.role.as_str()) {
            return Err(malformed(format!(
                "member {:?} has role {:?}; use voter or learner",
                m.name, m.role
            )));
        }
        let twice = a.members[..i]
            .iter()
            .any(|o| o.name == m.name || o.node_id == m.node_id);
        if twice {
            return Err(malformed(format!(
                "member {:?} (node {:016x}) is listed twice",
                m.name, m.node_id
            )));
        }
    }
    Ok(())
}

fn check_addr(whose: &str, addr: &str) -> Result<(), Refusal> {
    if addr.is_empty() || addr.len() > MAX_ADDR_BYTES || addr.chars().any(char::is_control) {
        return Err(malformed(format!(
            "the address of {whose:?} is empty, longer than {MAX_ADDR_BYTES} bytes or has \
             control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_shared::wire::proxy::MemberInfo;

    fn announcement() -> Announcement {
        Announcement {
            group_id: [1; 16],
            name: "alice".into(),
            node_id: 7,
            addr: "127.0.0.1:1".into(),
            term: 1,
            members: vec![MemberInfo {
                name: "alice".into(),
                node_id: 7,
                addr: "127.0.0.1:1".into(),
                role: "voter".into(),
            }],
            time_ms: 0,
        }
    }

    #[test]
    fn contents_are_bounded_and_well_formed() {
        assert!(check_contents(&announcement()).is_ok());

        let mut a = announcement();
        a.addr = String::new();
        assert!(check_contents(&a).is_err());

        let mut a = announcement();
        a.members[0].name = "no spaces".into();
        assert!(check_contents(&a).is_err());

        let mut a = announcement();
        a.members[0].role = "king".into();
        assert!(check_contents(&a).is_err());

        let mut a = announcement();
        let mut twin = a.members[0].clone();
        twin.name = "bob".into();
        a.members.push(twin);
        assert!(check_contents(&a).is_err(), "one node id under two names");

        let mut a = announcement();
        a.members = (0..=MAX_MEMBERS as u64)
            .map(|i| MemberInfo {
                name: format!("m{i}"),
                node_id: i,
                addr: "127.0.0.1:1".into(),
                role: "learner".into(),
            })
            .collect();
        assert!(check_contents(&a).is_err());
    }
}
