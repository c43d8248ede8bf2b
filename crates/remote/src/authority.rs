//! The deployment's certificate authority, kept by the main process: created on first
//! use in a state directory (mode `0700`, private keys `0600`), or given by the user.
//! It signs the hub's own certificate and, at enrolment, each remote process's.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::RemoteError;

/// The name the hub's certificate is issued for, and the one a remote process checks,
/// whatever address it connects to (the pinned authority is what proves the hub).
pub const HUB_SERVER_NAME: &str = "yukicomm-hub";

/// The SHA-256 of a certificate, in lowercase hex: what a join token pins.
pub fn fingerprint(cert: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A certificate and its private key, as DER.
pub struct Identity {
    /// The certificate chain, the leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Its private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// The authority and the hub's certificate.
pub struct Authority {
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
    ca_der: CertificateDer<'static>,
    hub: Identity,
}

fn io(path: &Path, what: &str) -> impl FnOnce(std::io::Error) -> RemoteError {
    let path = path.display().to_string();
    let what = what.to_string();
    move |source| RemoteError::Io {
        context: format!("{what} {path}"),
        source,
    }
}

/// Creates `dir` (and its parents) with mode `0700`, or checks an existing one is not
/// readable by others.
pub fn private_dir(dir: &Path) -> Result<(), RemoteError> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir, "cannot create"))?;
    }
    let mode = std::fs::metadata(dir)
        .map_err(io(dir, "cannot read"))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(dir, "cannot restrict"))?;
    }
    Ok(())
}

/// Writes `data` to `path` with mode `mode`, replacing it atomically.
pub fn write_private(path: &Path, data: &[u8], mode: u32) -> Result<(), RemoteError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp, "cannot create"))?;
    f.write_all(data).map_err(io(&tmp, "cannot write"))?;
    f.sync_all().map_err(io(&tmp, "cannot write"))?;
    std::fs::rename(&tmp, path).map_err(io(path, "cannot write"))
}

fn bad(path: &Path, reason: impl std::fmt::Display) -> RemoteError {
    RemoteError::Certificate(format!("{}: {reason}", path.display()))
}

/// Reads the first PEM certificate of `path`.
pub fn read_cert(path: &Path) -> Result<CertificateDer<'static>, RemoteError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_file(path).map_err(|e| bad(path, e))
}

/// Reads the PEM private key of `path`.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, RemoteError> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_file(path).map_err(|e| bad(path, e))
}

fn pem(tag: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(tag, der.to_vec()))
}

/// Writes a certificate as PEM.
pub fn write_cert(path: &Path, der: &[u8]) -> Result<(), RemoteError> {
    write_private(path, pem("CERTIFICATE", der).as_bytes(), 0o644)
}

/// Writes a PKCS#8 private key as PEM, mode `0600`.
pub fn write_key(path: &Path, der: &[u8]) -> Result<(), RemoteError> {
    write_private(path, pem("PRIVATE KEY", der).as_bytes(), 0o600)
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "yukicomm deployment authority");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    params
}

impl Authority {
    /// The authority kept in `dir`: loaded if `ca.pem` and `ca.key` are there, created
    /// (with the directory, mode `0700`) otherwise. A new hub certificate is issued each
    /// time.
    pub fn open(dir: &Path) -> Result<Authority, RemoteError> {
        private_dir(dir)?;
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        let (ca_key, ca_der) = if cert_path.exists() && key_path.exists() {
            let key_pem =
                std::fs::read_to_string(&key_path).map_err(io(&key_path, "cannot read"))?;
            let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(&key_path, e))?;
            (key, read_cert(&cert_path)?)
        } else {
            let key = KeyPair::generate().map_err(|e| bad(&key_path, e))?;
            let cert = ca_params()
                .self_signed(&key)
                .map_err(|e| bad(&cert_path, e))?;
            write_key(&key_path, &key.serialize_der())?;
            write_cert(&cert_path, cert.der())?;
            (key, cert.der().clone())
        };
        Authority::from_parts(ca_der, ca_key)
    }

    /// The authority of the certificate `ca_cert` and its key `ca_key` (PEM files the
    /// user gives).
    pub fn from_files(ca_cert: &Path, ca_key: &Path) -> Result<Authority, RemoteError> {
        let key_pem = std::fs::read_to_string(ca_key).map_err(io(ca_key, "cannot read"))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(ca_key, e))?;
        Authority::from_parts(read_cert(ca_cert)?, key)
    }

    fn from_parts(
        ca_der: CertificateDer<'static>,
        ca_key: KeyPair,
    ) -> Result<Authority, RemoteError> {
        // rcgen signs with a `Certificate`; one made from the same key and the stored
        // certificate's parameters carries the same subject, which is what issuing needs.
        let params = CertificateParams::from_ca_cert_der(&ca_der)
            .map_err(|e| RemoteError::Certificate(format!("the authority's certificate: {e}")))?;
        let ca_cert = params
            .self_signed(&ca_key)
            .map_err(|e| RemoteError::Certificate(format!("the authority: {e}")))?;
        let hub_key = KeyPair::generate()
            .map_err(|e| RemoteError::Certificate(format!("the hub's key: {e}")))?;
        let mut params = CertificateParams::new(vec![HUB_SERVER_NAME.to_string()])
            .map_err(|e| RemoteError::Certificate(format!("the hub's certificate: {e}")))?;
        params
            .distinguished_name
            .push(DnType::CommonName, HUB_SERVER_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let hub_cert = params
            .signed_by(&hub_key, &ca_cert, &ca_key)
            .map_err(|e| RemoteError::Certificate(format!("the hub's certificate: {e}")))?;
        let hub = Identity {
            chain: vec![hub_cert.der().clone(), ca_der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(hub_key.serialize_der())),
        };
        Ok(Authority {
            ca_cert,
            ca_key,
            ca_der,
            hub,
        })
    }

    /// The authority's certificate.
    pub fn ca(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// The fingerprint a join token pins.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.ca_der)
    }

    /// The hub's certificate chain and key.
    pub fn hub_identity(&self) -> &Identity {
        &self.hub
    }

    /// Issues a certificate for the process `name` from its signing request (whose
    /// subject is replaced: the name is the one the token gave).
    pub fn issue(
        &self,
        name: &str,
        csr_der: &[u8],
    ) -> Result<CertificateDer<'static>, RemoteError> {
        let der = rustls::pki_types::CertificateSigningRequestDer::from(csr_der.to_vec());
        let mut csr = CertificateSigningRequestParams::from_der(&der)
            .map_err(|e| RemoteError::Enrolment(format!("a bad certificate request: {e}")))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        csr.params.distinguished_name = dn;
        csr.params.subject_alt_names = Vec::new();
        csr.params.is_ca = IsCa::ExplicitNoCa;
        csr.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        csr.params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        csr.params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let cert = csr
            .signed_by(&self.ca_cert, &self.ca_key)
            .map_err(|e| RemoteError::Enrolment(format!("cannot issue: {e}")))?;
        Ok(cert.der().clone())
    }
}

impl Authority {
    /// Issues a certificate for the process `name` with a key made here, for a client
    /// that cannot make one: the certificate and the key (PKCS#8 DER).
    pub fn issue_with_key(
        &self,
        name: &str,
    ) -> Result<(CertificateDer<'static>, Vec<u8>), RemoteError> {
        let (key, request) = new_request()?;
        Ok((self.issue(name, &request)?, key.serialize_der()))
    }
}

/// The process name a client certificate was issued for (its subject's common name).
pub fn name_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// A fresh key pair and a signing request for it, for enrolment.
pub fn new_request() -> Result<(KeyPair, Vec<u8>), RemoteError> {
    let key = KeyPair::generate().map_err(|e| RemoteError::Certificate(e.to_string()))?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "yukicomm process");
    let csr = params
        .serialize_request(&key)
        .map_err(|e| RemoteError::Certificate(e.to_string()))?;
    Ok((key, csr.der().to_vec()))
}

/// Where a main process keeps its authority by default: `$XDG_STATE_HOME/yukicomm/hub`,
/// else `~/.local/state/yukicomm/hub`.
pub fn default_state_dir(leaf: &str) -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local").join("state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("yukicomm").join(leaf)
}
