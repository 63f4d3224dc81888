//! A member's identity: its key (created on first start, mode 0600) and its certificate from
//! the key manager (registered on first start, kept in the data directory afterwards).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use conclave_keymanager::client::KeymanagerClient;
use conclave_keymanager::KeymanagerError;
use conclave_shared::cert::{Certificate, Role, VerifiedCert};
use conclave_shared::codec::Canonical;
use conclave_shared::identity::{write_atomically, Identity, PublicKey};
use conclave_shared::wire::km::KmErrorCode;
use tracing::info;

use crate::error::PeerError;

pub const IDENTITY_FILE: &str = "identity.pem";
pub const CERT_FILE: &str = "certificate.bin";

pub struct Enrolled {
    pub identity: Arc<Identity>,
    pub cert: VerifiedCert,
}

pub struct EnrolOptions<'a> {
    pub data_dir: &'a Path,
    pub name: &'a str,
    pub key_bits: usize,
    pub keymanager: SocketAddr,
    pub root: &'a PublicKey,
    pub invite: Option<String>,
    pub deadline: Duration,
}

pub async fn enrol(endpoint: &quinn::Endpoint, o: EnrolOptions<'_>) -> Result<Enrolled, PeerError> {
    let key_path = o.data_dir.join(IDENTITY_FILE);
    let bits = o.key_bits;
    let (identity, created) =
        tokio::task::spawn_blocking(move || Identity::load_or_generate(&key_path, bits))
            .await
            .map_err(|e| PeerError::Internal(e.to_string()))??;
    if created {
        info!(fingerprint = %identity.fingerprint(), "created a new identity key");
    }
    let cert_path = o.data_dir.join(CERT_FILE);
    if let Ok(bytes) = std::fs::read(&cert_path) {
        let cert = Certificate::from_canonical(&bytes)
            .map_err(|e| PeerError::DataDir {
                path: cert_path.clone(),
                why: format!("the stored certificate is corrupt: {e}"),
            })?
            .verify(o.root)
            .and_then(|c| c.expect_key(identity.public().spki_der()))
            .and_then(|c| c.expect_role(Role::Member))
            .map_err(|e| PeerError::DataDir {
                path: cert_path.clone(),
                why: format!("the stored certificate does not fit this key and root: {e}"),
            })?;
        if cert.name() != o.name {
            return Err(PeerError::DataDir {
                path: o.data_dir.to_owned(),
                why: format!("it belongs to {:?}, not {:?}", cert.name(), o.name),
            });
        }
        return Ok(Enrolled {
            identity: Arc::new(identity),
            cert,
        });
    }
    let client = KeymanagerClient::connect_retrying(endpoint, o.keymanager, o.root, o.deadline)
        .await
        .map_err(|e| PeerError::KeymanagerUnreachable(e.to_string()))?;
    let cert = match client
        .register(&identity, o.name, Role::Member, o.invite)
        .await
    {
        Ok(c) => c,
        Err(KeymanagerError::Refused {
            code: KmErrorCode::NameTaken,
            ..
        }) => {
            return Err(PeerError::NameTaken {
                name: o.name.to_owned(),
            })
        }
        Err(e) => {
            return Err(PeerError::Registration {
                name: o.name.to_owned(),
                why: e.to_string(),
            })
        }
    };
    client.close();
    write_atomically(&cert_path, &cert.certificate().to_canonical(), 0o644)?;
    info!(
        name = o.name,
        serial = cert.serial(),
        "registered with the key manager"
    );
    Ok(Enrolled {
        identity: Arc::new(identity),
        cert,
    })
}
