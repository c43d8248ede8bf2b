//! TLS 1.3 configurations: the hub's (its certificate; client certificates of the
//! authority checked when presented, required for everything but enrolment) and a
//! remote process's (the hub's certificate checked against the authority the join
//! token pins; its own certificate once enrolled).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::authority::{fingerprint, Identity, HUB_SERVER_NAME};
use crate::RemoteError;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(e: impl std::fmt::Display) -> RemoteError {
    RemoteError::Certificate(e.to_string())
}

/// The hub's configuration: TLS 1.3 only, its identity, client certificates verified
/// against `ca` (optional at the TLS level: a connection without one may only enrol).
pub fn server_config(
    hub: &Identity,
    ca: &CertificateDer<'static>,
) -> Result<Arc<ServerConfig>, RemoteError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).map_err(tls_error)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(tls_error)?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(hub.chain.clone(), hub.key.clone_key())
        .map_err(tls_error)?;
    Ok(Arc::new(config))
}

/// A remote process's configuration: the hub must present a certificate of the
/// authority whose fingerprint is `pinned`; `identity` is this process's own, once it
/// has one.
pub fn client_config(
    pinned: &str,
    identity: Option<&Identity>,
) -> Result<Arc<ClientConfig>, RemoteError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedAuthority {
            fingerprint: pinned.to_ascii_lowercase(),
            provider: provider(),
        }));
    let config = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .map_err(tls_error)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The name a remote process asks for in the handshake.
pub fn hub_name() -> ServerName<'static> {
    ServerName::try_from(HUB_SERVER_NAME).expect("a valid DNS name")
}

/// Checks the hub's certificate against the one authority a join token pins: the hub
/// sends the authority's certificate in its chain; it must have the pinned fingerprint,
/// and the hub's certificate must be valid under it for [`HUB_SERVER_NAME`].
#[derive(Debug)]
struct PinnedAuthority {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedAuthority {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| fingerprint(c.as_ref()) == self.fingerprint)
        else {
            return Err(rustls::Error::General(
                "the hub's certificate authority is not the one the join token pins".into(),
            ));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        webpki.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
