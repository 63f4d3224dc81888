//! Whom a node trusts: the root key, the roles an endpoint accepts, the revocations it knows.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use crate::cert::Role;
use crate::identity::PublicKey;

/// Serials of revoked certificates, shared between the node (which inserts them as it learns
/// revocations) and every verifier and connection check built from the same set.
///
/// A std `RwLock` is right here: the sections are a single hash-set lookup or insert, never
/// held across an `.await`, and the rustls verifiers that read it are synchronous.
#[derive(Clone, Default)]
pub struct RevokedSerials(Arc<RwLock<HashSet<u64>>>);

impl RevokedSerials {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a revoked serial; new handshakes and [`peer_cert`](super::peer_cert) checks
    /// refuse it from now on. Returns whether it was new.
    pub fn insert(&self, serial: u64) -> bool {
        // A panic inside `insert` cannot leave the set half-changed, so a poisoned lock still
        // holds a consistent set; refusing to learn revocations would be the worse failure.
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(serial)
    }

    /// Whether `serial` is known to be revoked.
    pub fn contains(&self, serial: u64) -> bool {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&serial)
    }

    /// How many serials are known to be revoked.
    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for RevokedSerials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RevokedSerials({} serials)", self.len())
    }
}

impl Extend<u64> for RevokedSerials {
    fn extend<I: IntoIterator<Item = u64>>(&mut self, serials: I) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(serials);
    }
}

/// What an endpoint accepts from peers: certificates signed by `root`, of one of the allowed
/// roles, not revoked. Cloning is cheap and clones share the revoked set.
#[derive(Clone)]
pub struct MemberTrust(Arc<Inner>);

struct Inner {
    root: PublicKey,
    allowed: Vec<Role>,
    revoked: RevokedSerials,
}

impl MemberTrust {
    /// Trusts certificates from `root` with a role in `allowed`, minus the serials in
    /// `revoked`. An empty `allowed` accepts no one.
    pub fn new(root: PublicKey, allowed: &[Role], revoked: RevokedSerials) -> Self {
        let mut roles: Vec<Role> = Vec::with_capacity(allowed.len());
        for role in allowed {
            if !roles.contains(role) {
                roles.push(*role);
            }
        }
        Self(Arc::new(Inner {
            root,
            allowed: roles,
            revoked,
        }))
    }

    pub fn root(&self) -> &PublicKey {
        &self.0.root
    }

    pub fn allowed_roles(&self) -> &[Role] {
        &self.0.allowed
    }

    pub fn allows(&self, role: Role) -> bool {
        self.0.allowed.contains(&role)
    }

    /// The shared revoked set; insert into it to refuse a serial from now on.
    pub fn revoked(&self) -> &RevokedSerials {
        &self.0.revoked
    }

    pub(crate) fn allowed_roles_text(&self) -> String {
        if self.0.allowed.is_empty() {
            return "no role".to_owned();
        }
        self.0
            .allowed
            .iter()
            .map(Role::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Debug for MemberTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemberTrust")
            .field("root", &self.0.root.fingerprint())
            .field("allowed", &self.0.allowed)
            .field("revoked", &self.0.revoked)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_one_revoked_set() {
        let a = RevokedSerials::new();
        let mut b = a.clone();
        assert!(a.insert(3));
        assert!(!b.insert(3));
        b.extend([4, 5]);
        assert!(a.contains(4) && a.contains(5) && !a.contains(6));
        assert_eq!(a.len(), 3);
    }
}
