//! Upstream registries: parsing their addresses, sealing their secrets, and the connection
//! test, which speaks to the upstream as clients do (`/v2/`, then Basic or the Docker token
//! flow) and names the one cause a connection fails for.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::Serialize;

use crate::service::{self, ServiceError};
use crate::AppState;

/// An upstream's address: `scheme://host[:port]`, nothing more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// `https://host[:port]`, as stored and shown.
    pub url: String,
    /// `host[:port]`, lower case: one entry per host in a registry.
    pub host: String,
}

impl UpstreamUrl {
    pub fn parse(text: &str) -> Result<UpstreamUrl, String> {
        let bad =
            |why: &str| format!("upstream URL {text:?} {why}; e.g. https://registry.example.com");
        if !text.trim().contains("://") {
            return Err(bad("must start with https:// or http://"));
        }
        let url =
            reqwest::Url::parse(text.trim()).map_err(|e| bad(&format!("is invalid ({e})")))?;
        if url.scheme() != "https" && url.scheme() != "http" {
            return Err(bad("must start with https:// or http://"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "must not hold credentials (give them as username and secret)",
            ));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(bad("must be scheme and host (and port) only, with no path"));
        }
        let host = url
            .host_str()
            .ok_or_else(|| bad("has no host"))?
            .to_ascii_lowercase();
        let host = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host,
        };
        Ok(UpstreamUrl {
            url: format!("{}://{host}", url.scheme()),
            host,
        })
    }
}

/// Seals a secret for the database under the registry's keys (the instance's, or its own).
pub(crate) async fn seal_secret(
    state: &AppState,
    key_id: Option<&str>,
    secret: &str,
) -> Result<String, ServiceError> {
    let (_, sealing) = state.scoped(key_id)?;
    service::seal_text(&sealing, secret).await
}

/// Opens a secret `seal_secret` stored.
async fn open_secret(
    state: &AppState,
    key_id: Option<&str>,
    host: &str,
    stored: &str,
) -> Result<String, ServiceError> {
    let (_, sealing) = state.scoped(key_id)?;
    service::open_text(
        &sealing,
        &format!("the stored secret of upstream {host}"),
        stored,
    )
    .await
}

/// An upstream's credentials as the registry stores them, the secret opened: for the node's
/// own use (the cache and replication), never shown.
pub(crate) struct Opened {
    pub url: String,
    pub username: String,
    secret: String,
    ca_certificate: Option<String>,
}

impl Opened {
    /// The upstream `host` of a registry; `None` when it has no such entry.
    pub async fn load(
        state: &AppState,
        registry_id: i64,
        key_id: Option<&str>,
        host: &str,
    ) -> Result<Option<Opened>, ServiceError> {
        match state.meta.upstream(registry_id, host).await? {
            Some(record) => Ok(Some(Opened::open(state, key_id, record).await?)),
            None => Ok(None),
        }
    }

    /// A stored entry, its secret opened.
    pub async fn open(
        state: &AppState,
        key_id: Option<&str>,
        record: wharf_meta::UpstreamRecord,
    ) -> Result<Opened, ServiceError> {
        let secret = open_secret(state, key_id, &record.host, &record.secret).await?;
        Ok(Opened {
            url: record.url,
            username: record.username,
            secret,
            ca_certificate: record.ca_certificate,
        })
    }

    pub fn credentials(&self) -> Credentials<'_> {
        Credentials {
            url: &self.url,
            username: &self.username,
            secret: &self.secret,
            ca_certificate: self.ca_certificate.as_deref(),
        }
    }
}

/// Checks that `pem` holds at least one certificate.
pub fn check_ca(pem: &str) -> Result<(), String> {
    match reqwest::Certificate::from_pem_bundle(pem.as_bytes()) {
        Ok(certs) if !certs.is_empty() => Ok(()),
        Ok(_) => Err("the CA certificate holds no PEM certificate".into()),
        Err(e) => Err(format!("the CA certificate is not PEM: {e}")),
    }
}

/// Why a connection test ended as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    Ok,
    AuthenticationFailed,
    TokenExpired,
    NoPullRights,
    NoPushRights,
    RepositoryMissing,
    Unreachable,
    TlsUntrusted,
    UnexpectedResponse,
}

/// What a connection test found.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TestReport {
    pub cause: Cause,
    /// One sentence for a person.
    pub detail: String,
    /// The rights seen on the repository tested (`pull`, `push`); empty without a repository.
    pub rights: Vec<String>,
    /// The HTTP status behind an unexpected response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The start of an unexpected response's body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub excerpt: Option<String>,
    /// The certificate presented, when it is not trusted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateInfo>,
}

/// Who a certificate names, as RFC 4514 strings.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CertificateInfo {
    pub subject: String,
    pub issuer: String,
}

impl TestReport {
    fn fail(cause: Cause, detail: impl Into<String>) -> TestReport {
        TestReport {
            cause,
            detail: detail.into(),
            rights: Vec::new(),
            status: None,
            excerpt: None,
            certificate: None,
        }
    }

    fn unexpected(status: u16, body: &str, what: &str) -> TestReport {
        let excerpt = excerpt(body, 300);
        TestReport {
            status: Some(status),
            excerpt: Some(excerpt),
            ..TestReport::fail(
                Cause::UnexpectedResponse,
                format!("{what} answered HTTP {status}, which no registry answers there"),
            )
        }
    }
}

/// Credentials to test.
pub struct Credentials<'a> {
    pub url: &'a str,
    pub username: &'a str,
    pub secret: &'a str,
    pub ca_certificate: Option<&'a str>,
}

/// How the upstream wants to be authenticated.
enum Challenge {
    None,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

fn challenge(headers: &reqwest::header::HeaderMap) -> Option<Challenge> {
    let value = headers
        .get(reqwest::header::WWW_AUTHENTICATE)?
        .to_str()
        .ok()?;
    let (scheme, params) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let param = |name: &str| {
        params.split(',').find_map(|p| {
            let (k, v) = p.trim().split_once('=')?;
            k.eq_ignore_ascii_case(name)
                .then(|| v.trim().trim_matches('"').to_string())
        })
    };
    Some(Challenge::Bearer {
        realm: param("realm")?,
        service: param("service"),
    })
}

/// Whether an open `/v2/` comes from a registry: registries say their API version, or answer
/// JSON; a web page there is something else.
fn speaks_registry(headers: &reqwest::header::HeaderMap) -> bool {
    let json = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("json"));
    headers.contains_key("docker-distribution-api-version") || json
}

/// Whether a refusal says the credential expired (registries word it in the body or in the
/// challenge's error description).
fn says_expired(headers: &reqwest::header::HeaderMap, body: &str) -> bool {
    let header = headers
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    format!("{header} {body}")
        .to_ascii_lowercase()
        .contains("expired")
}

/// A refused credential: expired or wrong.
fn refused(headers: &reqwest::header::HeaderMap, body: &str, username: &str) -> TestReport {
    if says_expired(headers, body) {
        TestReport::fail(
            Cause::TokenExpired,
            format!(
                "the upstream says the credential of {username:?} has expired; replace the secret"
            ),
        )
    } else {
        TestReport::fail(
            Cause::AuthenticationFailed,
            format!("the upstream refused {username:?} with this secret"),
        )
    }
}

/// The start of a response body (at most `chars` characters), for an error that shows it.
pub(crate) fn excerpt(body: &str, chars: usize) -> String {
    body.trim().chars().take(chars).collect()
}

/// An error with its causes, `: `-separated: reqwest's own message stops at "error sending
/// request", the cause (refused, DNS, certificate) is further down.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut chain = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        chain.push_str(": ");
        chain.push_str(&c.to_string());
        cause = c.source();
    }
    chain
}

/// Names a transport failure: no answer, or a certificate not trusted (with the certificate's
/// subject and issuer).
async fn transport(e: &reqwest::Error, url: &str) -> TestReport {
    let chain = error_chain(e);
    let lower = chain.to_ascii_lowercase();
    if lower.contains("certificate") || lower.contains("unknownissuer") {
        let certificate = peer_certificate(url).await;
        let named = certificate
            .as_ref()
            .map(|c| format!(" (subject {}, issued by {})", c.subject, c.issuer))
            .unwrap_or_default();
        return TestReport {
            certificate,
            ..TestReport::fail(
                Cause::TlsUntrusted,
                format!(
                    "the TLS certificate of {url}{named} is not trusted; give the upstream its CA certificate"
                ),
            )
        };
    }
    let why = if e.is_timeout() {
        "no answer in time".to_string()
    } else if lower.contains("dns") || lower.contains("failed to lookup") {
        "its host name does not resolve".to_string()
    } else if lower.contains("connection refused") {
        "the connection was refused (nothing listens on that port)".to_string()
    } else {
        chain
    };
    TestReport::fail(Cause::Unreachable, format!("{url} is not reachable: {why}"))
}

/// A client of one upstream registry that logs in as registry clients do: `/v2/` first, then
/// Basic or the Docker token flow, as the upstream's challenge asks. A failure is the report
/// that names its cause.
pub struct UpstreamClient<'a> {
    http: reqwest::Client,
    credentials: &'a Credentials<'a>,
    base: String,
}

impl<'a> UpstreamClient<'a> {
    /// A client for short exchanges (a connection test): each ends within 15 s.
    pub fn new(credentials: &'a Credentials<'a>) -> Result<UpstreamClient<'a>, Box<TestReport>> {
        Self::build(
            credentials,
            reqwest::Client::builder().timeout(Duration::from_secs(15)),
        )
    }

    /// A client for transfers (a blob may take long): it fails only when the upstream sends
    /// nothing for `idle`.
    pub fn for_transfer(
        credentials: &'a Credentials<'a>,
        idle: Duration,
    ) -> Result<UpstreamClient<'a>, Box<TestReport>> {
        Self::build(credentials, reqwest::Client::builder().read_timeout(idle))
    }

    fn build(
        credentials: &'a Credentials<'a>,
        builder: reqwest::ClientBuilder,
    ) -> Result<UpstreamClient<'a>, Box<TestReport>> {
        let mut builder = builder
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::limited(5));
        if let Some(pem) = credentials.ca_certificate {
            for cert in reqwest::Certificate::from_pem_bundle(pem.as_bytes()).unwrap_or_default() {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| {
            Box::new(TestReport::fail(
                Cause::Unreachable,
                format!("no HTTP client: {e}"),
            ))
        })?;
        Ok(UpstreamClient {
            http,
            credentials,
            base: credentials.url.trim_end_matches('/').to_string(),
        })
    }

    /// A request to `path` (from `/v2/` on) with the authorization `login` gave.
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        auth: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match auth {
            Some(a) => req.header(reqwest::header::AUTHORIZATION, a),
            None => req,
        }
    }

    /// A request to an upload's `Location`: a path on the upstream, or a full URL.
    pub fn request_location(
        &self,
        method: reqwest::Method,
        location: &str,
        auth: Option<&str>,
    ) -> reqwest::RequestBuilder {
        if location.starts_with('/') {
            return self.request(method, location, auth);
        }
        let req = self.http.request(method, location);
        match auth {
            Some(a) => req.header(reqwest::header::AUTHORIZATION, a),
            None => req,
        }
    }

    /// Logs in for `scope` (`repository:NAME:pull[,push]`): the `Authorization` value to send,
    /// or none where the upstream lets anyone in.
    pub async fn login(&self, scope: Option<&str>) -> Result<Option<String>, Box<TestReport>> {
        self.log_in(scope).await.map_err(Box::new)
    }

    async fn log_in(&self, scope: Option<&str>) -> Result<Option<String>, TestReport> {
        let c = self.credentials;
        let v2 = format!("{}/v2/", self.base);
        let first = match self.http.get(&v2).send().await {
            Ok(r) => r,
            Err(e) => return Err(transport(&e, c.url).await),
        };
        let status = first.status().as_u16();
        let challenge = match status {
            200 if speaks_registry(first.headers()) => Challenge::None,
            401 => match challenge(first.headers()) {
                Some(ch) => ch,
                None => {
                    let body = first.text().await.unwrap_or_default();
                    return Err(TestReport::unexpected(status, &body, &v2));
                }
            },
            _ => {
                let body = first.text().await.unwrap_or_default();
                return Err(TestReport::unexpected(status, &body, &v2));
            }
        };
        match challenge {
            Challenge::None => Ok(None),
            Challenge::Basic => {
                let basic = format!(
                    "Basic {}",
                    BASE64.encode(format!("{}:{}", c.username, c.secret))
                );
                match self
                    .http
                    .get(&v2)
                    .header(reqwest::header::AUTHORIZATION, &basic)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => Ok(Some(basic)),
                    Ok(r) if r.status().as_u16() == 401 => {
                        let headers = r.headers().clone();
                        Err(refused(
                            &headers,
                            &r.text().await.unwrap_or_default(),
                            c.username,
                        ))
                    }
                    Ok(r) => {
                        let s = r.status().as_u16();
                        Err(TestReport::unexpected(
                            s,
                            &r.text().await.unwrap_or_default(),
                            &v2,
                        ))
                    }
                    Err(e) => Err(transport(&e, c.url).await),
                }
            }
            Challenge::Bearer { realm, service } => {
                let mut query: Vec<(&str, String)> = Vec::new();
                if let Some(s) = service {
                    query.push(("service", s));
                }
                if let Some(s) = scope {
                    query.push(("scope", s.to_string()));
                }
                let r = match self
                    .http
                    .get(&realm)
                    .query(&query)
                    .basic_auth(c.username, Some(c.secret))
                    .send()
                    .await
                {
                    Ok(r) => r,
                    Err(e) => return Err(transport(&e, &realm).await),
                };
                let s = r.status().as_u16();
                let headers = r.headers().clone();
                let body = r.text().await.unwrap_or_default();
                match s {
                    200 => {}
                    401 | 403 => return Err(refused(&headers, &body, c.username)),
                    _ => return Err(TestReport::unexpected(s, &body, &realm)),
                }
                let token = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| {
                        v.get("token")
                            .or_else(|| v.get("access_token"))
                            .and_then(|t| t.as_str())
                            .map(str::to_string)
                    });
                match token {
                    Some(t) => Ok(Some(format!("Bearer {t}"))),
                    None => Err(TestReport::unexpected(s, &body, &realm)),
                }
            }
        }
    }
}

/// Tests credentials against their upstream: reaching `/v2/`, authenticating, then (with a
/// repository) pulling its tag list and, with `push`, opening and cancelling an upload.
pub async fn test_connection(
    c: &Credentials<'_>,
    repository: Option<&str>,
    push: bool,
) -> TestReport {
    let client = match UpstreamClient::new(c) {
        Ok(client) => client,
        Err(report) => return *report,
    };
    let scope = repository.map(|r| {
        if push {
            format!("repository:{r}:pull,push")
        } else {
            format!("repository:{r}:pull")
        }
    });
    let auth = match client.login(scope.as_deref()).await {
        Ok(auth) => auth,
        Err(report) => return *report,
    };
    let send = |method: reqwest::Method, path: &str| client.request(method, path, auth.as_deref());
    let base = client.base.as_str();
    let Some(repo) = repository else {
        return TestReport {
            cause: Cause::Ok,
            detail: format!("{} accepts these credentials", c.url),
            ..TestReport::fail(Cause::Ok, "")
        };
    };
    let mut rights = Vec::new();
    let mut missing = false;
    let tags = format!("{base}/v2/{repo}/tags/list");
    match send(reqwest::Method::GET, &format!("/v2/{repo}/tags/list"))
        .send()
        .await
    {
        Ok(r) => match r.status().as_u16() {
            200 => rights.push("pull".to_string()),
            404 => missing = true,
            401 | 403 => {
                return TestReport::fail(
                    Cause::NoPullRights,
                    format!("{:?} may not pull {repo} from {}", c.username, c.url),
                )
            }
            s => {
                let body = r.text().await.unwrap_or_default();
                return TestReport::unexpected(s, &body, &tags);
            }
        },
        Err(e) => return transport(&e, c.url).await,
    }
    if missing && !push {
        return TestReport::fail(
            Cause::RepositoryMissing,
            format!("repository {repo} does not exist on {}", c.url),
        );
    }
    if push {
        let uploads = format!("{base}/v2/{repo}/blobs/uploads/");
        match send(reqwest::Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .send()
            .await
        {
            Ok(r) if r.status().as_u16() == 202 => {
                rights.push("push".to_string());
                // The session opened to see is closed again.
                if let Some(loc) = r
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                {
                    let _ = client
                        .request_location(reqwest::Method::DELETE, loc, auth.as_deref())
                        .send()
                        .await;
                }
            }
            Ok(r) if matches!(r.status().as_u16(), 401 | 403) => {
                if missing {
                    return TestReport::fail(
                        Cause::RepositoryMissing,
                        format!(
                            "repository {repo} does not exist on {}, and {:?} may not create it",
                            c.url, c.username
                        ),
                    );
                }
                return TestReport {
                    rights,
                    ..TestReport::fail(
                        Cause::NoPushRights,
                        format!("{:?} may pull {repo} but not push to it", c.username),
                    )
                };
            }
            Ok(r) => {
                let s = r.status().as_u16();
                return TestReport::unexpected(s, &r.text().await.unwrap_or_default(), &uploads);
            }
            Err(e) => return transport(&e, c.url).await,
        }
    }
    let detail = if missing {
        format!(
            "{} accepts these credentials: {repo} does not exist yet, and the first push creates it",
            c.url
        )
    } else {
        format!(
            "{} accepts these credentials: {} on {repo}",
            c.url,
            rights.join(" and ")
        )
    };
    TestReport {
        cause: Cause::Ok,
        detail,
        rights,
        status: None,
        excerpt: None,
        certificate: None,
    }
}

/// The certificate a TLS server presents, read by a handshake that trusts anything (only to
/// name the certificate in an error; nothing is sent over it).
async fn peer_certificate(url: &str) -> Option<CertificateInfo> {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use x509_cert::der::Decode;

    #[derive(Debug)]
    struct Capture(
        std::sync::Mutex<Option<Vec<u8>>>,
        Vec<rustls::SignatureScheme>,
    );
    impl ServerCertVerifier for Capture {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(end_entity.to_vec());
            // Seen; the handshake need not go on.
            Err(rustls::Error::General("certificate read".into()))
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::General("not verified".into()))
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::General("not verified".into()))
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.1.clone()
        }
    }

    let parsed = reqwest::Url::parse(url).ok()?;
    let host = parsed.host_str()?.trim_matches(['[', ']']).to_string();
    let port = parsed.port_or_known_default()?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let schemes = provider
        .signature_verification_algorithms
        .supported_schemes();
    let capture = std::sync::Arc::new(Capture(std::sync::Mutex::new(None), schemes));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .ok()?
    .ok()?;
    let name = ServerName::try_from(host).ok()?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let _ = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp)).await;
    let der = capture.0.lock().unwrap_or_else(|e| e.into_inner()).take()?;
    let cert = x509_cert::Certificate::from_der(&der).ok()?;
    Some(CertificateInfo {
        subject: cert.tbs_certificate.subject.to_string(),
        issuer: cert.tbs_certificate.issuer.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls_are_scheme_and_host() {
        let u = UpstreamUrl::parse("https://Registry.Example.com:5000/").expect("url");
        assert_eq!(u.host, "registry.example.com:5000");
        assert_eq!(u.url, "https://registry.example.com:5000");
        for bad in [
            "registry.example.com",
            "ftp://x.example.com",
            "https://u:p@x.example.com",
            "https://x.example.com/v2/",
            "https://x.example.com?q=1",
        ] {
            assert!(UpstreamUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
