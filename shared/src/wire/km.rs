//! The key-manager protocol, ALPN `conclave/km/1`.
//!
//! One request per bidirectional stream, answered by one response, both as frames. A
//! registration first asks for a [`ToKeymanager::Challenge`] on the same connection and then
//! proves possession of its key by signing it. A challenge is good for one registration on
//! that connection only, so a proof cannot be replayed; a connection may hold a few
//! outstanding challenges, so concurrent registrations over one connection do not collide.

use serde::{Deserialize, Serialize};

use crate::cert::{Certificate, Role, SignedRevocation};
use crate::identity::signing_input;

pub const ALPN: &[u8] = b"conclave/km/1";
/// Requests are small: the largest is a registration (a name, a key, a signature).
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Responses may list every member's certificate.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
pub const CHALLENGE_BYTES: usize = 32;
const REGISTER_DOMAIN: &str = "conclave/register/v1";

/// Client to key manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ToKeymanager {
    /// A fresh nonce to sign for [`ToKeymanager::Register`] on this connection.
    Challenge,
    Register {
        name: String,
        role: Role,
        /// SPKI DER of the key to certify.
        public_key: Vec<u8>,
        /// The challenge this registration answers.
        nonce: [u8; CHALLENGE_BYTES],
        /// Signature by that key over [`register_proof_input`].
        proof: Vec<u8>,
        /// The one-time token, required in `invite` mode.
        invite: Option<String>,
    },
    Lookup {
        name: String,
    },
    List,
    Revocations,
    /// Admin: a one-time token for `name`.
    Invite {
        admin_token: String,
        name: String,
    },
    /// Admin: revoke `name`'s certificate.
    Revoke {
        admin_token: String,
        name: String,
    },
}

/// Key manager to client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum FromKeymanager {
    Challenge { nonce: [u8; CHALLENGE_BYTES] },
    Registered { cert: Certificate },
    Found { entry: Option<MemberEntry> },
    Members { entries: Vec<MemberEntry> },
    Revocations { revocations: Vec<SignedRevocation> },
    Invited { token: String },
    Revoked { revocation: SignedRevocation },
    Error { code: KmErrorCode, message: String },
}

/// A registered name as the key manager reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEntry {
    pub cert: Certificate,
    pub revoked: bool,
}

/// Why the key manager refused, so that clients can react without parsing text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum KmErrorCode {
    /// The name is bound to another key for good.
    NameTaken,
    /// The proof of possession does not verify.
    BadProof,
    /// Register named no outstanding challenge of this connection.
    NoChallenge,
    /// Invite mode: no token given.
    InviteRequired,
    /// The token is unknown, used, or for another name.
    BadInvite,
    /// The admin token is wrong.
    NotAuthorized,
    UnknownName,
    /// The name's certificate is revoked; it cannot register again.
    Revoked,
    AlreadyRevoked,
    /// The request is malformed or not allowed (bad name, bad key, unknown message).
    BadRequest,
    /// The key manager failed; try again.
    Internal,
}

/// What a registering key signs: domain, name, role, SPKI and the server's challenge.
pub fn register_proof_input(name: &str, role: Role, spki_der: &[u8], nonce: &[u8]) -> Vec<u8> {
    let role = role.to_string();
    signing_input(
        REGISTER_DOMAIN,
        &[name.as_bytes(), role.as_bytes(), spki_der, nonce],
    )
}

#[cfg(test)]
mod proptests {
    use super::*;
    use crate::cert::{CertBody, Revocation};
    use crate::wire::{decode_message, encode_message};
    use proptest::prelude::*;

    fn role() -> impl Strategy<Value = Role> {
        prop_oneof![Just(Role::Member), Just(Role::Proxy)]
    }
    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..64)
    }
    fn cert() -> impl Strategy<Value = Certificate> {
        (
            ".{0,12}",
            role(),
            bytes(),
            any::<u64>(),
            any::<u64>(),
            bytes(),
        )
            .prop_map(|(name, role, spki_der, serial, issued_at_ms, signature)| {
                Certificate {
                    body: CertBody {
                        name,
                        role,
                        spki_der,
                        serial,
                        issued_at_ms,
                    },
                    signature,
                }
            })
    }
    fn revocation() -> impl Strategy<Value = SignedRevocation> {
        (any::<u64>(), ".{0,12}", any::<u64>(), bytes()).prop_map(|(serial, name, t, sig)| {
            SignedRevocation {
                statement: Revocation {
                    serial,
                    name,
                    revoked_at_ms: t,
                },
                signature: sig,
            }
        })
    }
    fn entry() -> impl Strategy<Value = MemberEntry> {
        (cert(), any::<bool>()).prop_map(|(cert, revoked)| MemberEntry { cert, revoked })
    }
    fn code() -> impl Strategy<Value = KmErrorCode> {
        prop_oneof![
            Just(KmErrorCode::NameTaken),
            Just(KmErrorCode::BadProof),
            Just(KmErrorCode::NoChallenge),
            Just(KmErrorCode::InviteRequired),
            Just(KmErrorCode::BadInvite),
            Just(KmErrorCode::NotAuthorized),
            Just(KmErrorCode::UnknownName),
            Just(KmErrorCode::Revoked),
            Just(KmErrorCode::AlreadyRevoked),
            Just(KmErrorCode::BadRequest),
            Just(KmErrorCode::Internal),
        ]
    }
    fn request() -> impl Strategy<Value = ToKeymanager> {
        prop_oneof![
            Just(ToKeymanager::Challenge),
            (
                ".{0,12}",
                role(),
                bytes(),
                any::<[u8; 32]>(),
                bytes(),
                proptest::option::of(".{0,8}")
            )
                .prop_map(|(name, role, public_key, nonce, proof, invite)| {
                    ToKeymanager::Register {
                        name,
                        role,
                        public_key,
                        nonce,
                        proof,
                        invite,
                    }
                }),
            ".{0,12}".prop_map(|name| ToKeymanager::Lookup { name }),
            Just(ToKeymanager::List),
            Just(ToKeymanager::Revocations),
            (".{0,8}", ".{0,8}")
                .prop_map(|(admin_token, name)| ToKeymanager::Invite { admin_token, name }),
            (".{0,8}", ".{0,8}")
                .prop_map(|(admin_token, name)| ToKeymanager::Revoke { admin_token, name }),
        ]
    }
    fn response() -> impl Strategy<Value = FromKeymanager> {
        prop_oneof![
            any::<[u8; 32]>().prop_map(|nonce| FromKeymanager::Challenge { nonce }),
            cert().prop_map(|cert| FromKeymanager::Registered { cert }),
            proptest::option::of(entry()).prop_map(|entry| FromKeymanager::Found { entry }),
            proptest::collection::vec(entry(), 0..4)
                .prop_map(|entries| FromKeymanager::Members { entries }),
            proptest::collection::vec(revocation(), 0..4)
                .prop_map(|revocations| FromKeymanager::Revocations { revocations }),
            ".{0,8}".prop_map(|token| FromKeymanager::Invited { token }),
            revocation().prop_map(|revocation| FromKeymanager::Revoked { revocation }),
            (code(), ".{0,20}").prop_map(|(code, message)| FromKeymanager::Error { code, message }),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(m in request()) {
            let b = encode_message(&m).unwrap();
            prop_assert_eq!(decode_message::<ToKeymanager>(&b).unwrap(), m);
        }

        #[test]
        fn responses_round_trip(m in response()) {
            let b = encode_message(&m).unwrap();
            prop_assert_eq!(decode_message::<FromKeymanager>(&b).unwrap(), m);
        }

        #[test]
        fn truncated_or_flipped_messages_never_panic(
            m in response(), q in request(), cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(), bit in 0u8..8,
        ) {
            // bincode is self-delimiting, so a strict prefix of one message is never a whole
            // message of the same type.
            let b = encode_message(&m).unwrap();
            let c = cut.index(b.len());
            prop_assert!(decode_message::<FromKeymanager>(&b[..c]).is_err());
            let b = encode_message(&q).unwrap();
            let c = cut.index(b.len());
            prop_assert!(decode_message::<ToKeymanager>(&b[..c]).is_err());
            for mut f in [encode_message(&m).unwrap(), encode_message(&q).unwrap()] {
                let i = flip.index(f.len());
                f[i] ^= 1 << bit;
                let _ = decode_message::<FromKeymanager>(&f);
                let _ = decode_message::<ToKeymanager>(&f);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_message::<FromKeymanager>(&b);
            let _ = decode_message::<ToKeymanager>(&b);
        }
    }
}
