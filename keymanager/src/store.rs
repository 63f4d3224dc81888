//! The key manager's durable state in one redb file.
//!
//! Every request that changes state is one write transaction with immediate durability, so a
//! registration, invitation or revocation has happened wholly or not at all when the process
//! dies, and a retry after a lost reply finds what was committed (the same key registering the
//! same name again gets the same certificate back).

use std::path::Path;

use conclave_shared::cert::{
    validate_name, CertBody, Certificate, Revocation, Role, SignedRevocation,
};
use conclave_shared::codec::Canonical;
use conclave_shared::identity::{Identity, PublicKey};
use conclave_shared::wire::km::{KmErrorCode, MemberEntry};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use sha2::{Digest, Sha256};

use crate::error::KeymanagerError;

/// Bumped when the tables change shape; an unknown version is refused, never guessed at.
pub const STORE_FORMAT_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// name → canonical certificate
const CERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("certs");
/// key fingerprint → name: one key holds one name, since node ids derive from keys.
const KEYS: TableDefinition<&[u8; 32], &str> = TableDefinition::new("keys");
/// SHA-256 of an invite token → the name it admits. Tokens themselves are never stored.
const INVITES: TableDefinition<&[u8; 32], &str> = TableDefinition::new("invites");
/// certificate serial → canonical signed revocation
const REVOCATIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("revocations");

const NEXT_SERIAL: &str = "next_serial";
const FORMAT: &str = "format_version";

/// A refusal the client caused, as opposed to a failure of the store.
#[derive(Debug)]
pub struct Refusal {
    pub code: KmErrorCode,
    pub message: String,
}

fn refuse<T>(
    code: KmErrorCode,
    message: impl Into<String>,
) -> Result<Result<T, Refusal>, KeymanagerError> {
    Ok(Err(Refusal {
        code,
        message: message.into(),
    }))
}

pub struct Store {
    db: Database,
}

/// What registration needs to know about the request, already checked for possession.
pub struct RegisterRequest<'a> {
    pub name: &'a str,
    pub role: Role,
    pub key: &'a PublicKey,
    pub invite: Option<&'a str>,
    pub invite_required: bool,
}

fn db_err(e: impl Into<redb::Error>) -> KeymanagerError {
    KeymanagerError::Store(e.into().to_string())
}

fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn decode_cert(bytes: &[u8]) -> Result<Certificate, KeymanagerError> {
    Certificate::from_canonical(bytes)
        .map_err(|e| KeymanagerError::Store(format!("stored certificate is corrupt: {e}")))
}

fn decode_revocation(bytes: &[u8]) -> Result<SignedRevocation, KeymanagerError> {
    SignedRevocation::from_canonical(bytes)
        .map_err(|e| KeymanagerError::Store(format!("stored revocation is corrupt: {e}")))
}

impl Store {
    /// Opens or creates the database, refusing one written by an unknown format version.
    pub fn open(path: &Path) -> Result<Self, KeymanagerError> {
        let db = Database::create(path).map_err(db_err)?;
        let tx = db.begin_write().map_err(db_err)?;
        {
            let mut meta = tx.open_table(META).map_err(db_err)?;
            let found = meta.get(FORMAT).map_err(db_err)?.map(|v| v.value());
            match found {
                None => {
                    meta.insert(FORMAT, STORE_FORMAT_VERSION).map_err(db_err)?;
                    meta.insert(NEXT_SERIAL, 1).map_err(db_err)?;
                }
                Some(STORE_FORMAT_VERSION) => {}
                Some(v) => {
                    return Err(KeymanagerError::Store(format!(
                        "{} has store format {v}; this build reads only {STORE_FORMAT_VERSION}",
                        path.display()
                    )))
                }
            }
            tx.open_table(CERTS).map_err(db_err)?;
            tx.open_table(KEYS).map_err(db_err)?;
            tx.open_table(INVITES).map_err(db_err)?;
            tx.open_table(REVOCATIONS).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(Self { db })
    }

    /// Registers `req.name` to `req.key`, or returns the certificate it already has.
    pub fn register(
        &self,
        root: &Identity,
        req: &RegisterRequest<'_>,
        now_ms: u64,
    ) -> Result<Result<Certificate, Refusal>, KeymanagerError> {
        if validate_name(req.name).is_err() {
            return refuse(
                KmErrorCode::BadRequest,
                format!(
                    "name {:?} is not allowed: use 1 to 64 of A-Z a-z 0-9 . _ -",
                    req.name
                ),
            );
        }
        let fp = req.key.fingerprint();
        let tx = self.db.begin_write().map_err(db_err)?;
        let cert = {
            let mut certs = tx.open_table(CERTS).map_err(db_err)?;
            let mut keys = tx.open_table(KEYS).map_err(db_err)?;
            let revocations = tx.open_table(REVOCATIONS).map_err(db_err)?;
            if let Some(existing) = certs.get(req.name).map_err(db_err)? {
                let existing = decode_cert(existing.value())?;
                if revocations
                    .get(existing.body.serial)
                    .map_err(db_err)?
                    .is_some()
                {
                    return refuse(
                        KmErrorCode::Revoked,
                        format!("{:?} was revoked and cannot register again", req.name),
                    );
                }
                if existing.body.spki_der != req.key.spki_der() {
                    return refuse(
                        KmErrorCode::NameTaken,
                        format!(
                            "name {:?} is registered to another key; choose another name",
                            req.name
                        ),
                    );
                }
                if existing.body.role != req.role {
                    return refuse(
                        KmErrorCode::BadRequest,
                        format!(
                            "{:?} is registered with role {}",
                            req.name, existing.body.role
                        ),
                    );
                }
                // The same key asking again, e.g. after a lost reply: same certificate.
                return Ok(Ok(existing));
            }
            if let Some(other) = keys.get(&fp.0).map_err(db_err)? {
                return refuse(
                    KmErrorCode::BadRequest,
                    format!(
                        "this key is already registered as {:?}; one key holds one name",
                        other.value()
                    ),
                );
            }
            if req.invite_required {
                let Some(token) = req.invite else {
                    return refuse(
                        KmErrorCode::InviteRequired,
                        "this key manager admits by invitation: ask an operator for \
                         `conclave keymanager invite NAME` and pass the token",
                    );
                };
                let mut invites = tx.open_table(INVITES).map_err(db_err)?;
                let h = token_hash(token);
                let invited = invites
                    .get(&h)
                    .map_err(db_err)?
                    .map(|v| v.value().to_owned());
                if invited.as_deref() != Some(req.name) {
                    return refuse(
                        KmErrorCode::BadInvite,
                        format!(
                            "the invite token is unknown, already used, or for another name than {:?}",
                            req.name
                        ),
                    );
                }
                invites.remove(&h).map_err(db_err)?;
            }
            let mut meta = tx.open_table(META).map_err(db_err)?;
            let serial = meta
                .get(NEXT_SERIAL)
                .map_err(db_err)?
                .map(|v| v.value())
                .unwrap_or(1);
            meta.insert(NEXT_SERIAL, serial + 1).map_err(db_err)?;
            let cert = Certificate::issue(
                root,
                CertBody {
                    name: req.name.to_owned(),
                    role: req.role,
                    spki_der: req.key.spki_der().to_vec(),
                    serial,
                    issued_at_ms: now_ms,
                },
            )?;
            certs
                .insert(req.name, cert.to_canonical().as_slice())
                .map_err(db_err)?;
            keys.insert(&fp.0, req.name).map_err(db_err)?;
            cert
        };
        tx.commit().map_err(db_err)?;
        Ok(Ok(cert))
    }

    pub fn lookup(&self, name: &str) -> Result<Option<MemberEntry>, KeymanagerError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let certs = tx.open_table(CERTS).map_err(db_err)?;
        let revocations = tx.open_table(REVOCATIONS).map_err(db_err)?;
        let Some(v) = certs.get(name).map_err(db_err)? else {
            return Ok(None);
        };
        let cert = decode_cert(v.value())?;
        let revoked = revocations.get(cert.body.serial).map_err(db_err)?.is_some();
        Ok(Some(MemberEntry { cert, revoked }))
    }

    pub fn list(&self) -> Result<Vec<MemberEntry>, KeymanagerError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let certs = tx.open_table(CERTS).map_err(db_err)?;
        let revocations = tx.open_table(REVOCATIONS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in certs.iter().map_err(db_err)? {
            let (_, v) = row.map_err(db_err)?;
            let cert = decode_cert(v.value())?;
            let revoked = revocations.get(cert.body.serial).map_err(db_err)?.is_some();
            out.push(MemberEntry { cert, revoked });
        }
        Ok(out)
    }

    pub fn revocations(&self) -> Result<Vec<SignedRevocation>, KeymanagerError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(REVOCATIONS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (_, v) = row.map_err(db_err)?;
            out.push(decode_revocation(v.value())?);
        }
        Ok(out)
    }

    /// Stores the hash of a fresh one-time token for `name`.
    pub fn invite(&self, name: &str, token: &str) -> Result<Result<(), Refusal>, KeymanagerError> {
        if validate_name(name).is_err() {
            return refuse(
                KmErrorCode::BadRequest,
                format!("name {name:?} is not allowed"),
            );
        }
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            if tx
                .open_table(CERTS)
                .map_err(db_err)?
                .get(name)
                .map_err(db_err)?
                .is_some()
            {
                return refuse(
                    KmErrorCode::NameTaken,
                    format!("{name:?} is already registered"),
                );
            }
            let mut invites = tx.open_table(INVITES).map_err(db_err)?;
            invites.insert(&token_hash(token), name).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(Ok(()))
    }

    /// Revokes `name`'s certificate with a root-signed statement.
    pub fn revoke(
        &self,
        root: &Identity,
        name: &str,
        now_ms: u64,
    ) -> Result<Result<SignedRevocation, Refusal>, KeymanagerError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let revocation = {
            let certs = tx.open_table(CERTS).map_err(db_err)?;
            let mut revocations = tx.open_table(REVOCATIONS).map_err(db_err)?;
            let Some(v) = certs.get(name).map_err(db_err)? else {
                return refuse(
                    KmErrorCode::UnknownName,
                    format!("no member is named {name:?}"),
                );
            };
            let cert = decode_cert(v.value())?;
            if revocations.get(cert.body.serial).map_err(db_err)?.is_some() {
                return refuse(
                    KmErrorCode::AlreadyRevoked,
                    format!("{name:?} is already revoked"),
                );
            }
            let r = SignedRevocation::issue(
                root,
                Revocation {
                    serial: cert.body.serial,
                    name: name.to_owned(),
                    revoked_at_ms: now_ms,
                },
            )?;
            revocations
                .insert(cert.body.serial, r.to_canonical().as_slice())
                .map_err(db_err)?;
            r
        };
        tx.commit().map_err(db_err)?;
        Ok(Ok(revocation))
    }
}
