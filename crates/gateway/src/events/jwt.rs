//! JWT: a tab's credential verified locally as a JSON Web Token (`auth.mode =
//! "jwt"`) — signature (HS256, RS256 or ES256, one algorithm configured),
//! `exp`, `nbf`, `iss`, `aud` — and the user read from one claim. Keys come
//! from a file, a JWKS file, or a JWKS document the backend serves (fetched
//! once, again when a token names an unknown `kid`, at most once a minute).
//! The cryptography is `jsonwebtoken`'s. This module never logs a token and
//! never trusts the token's own `alg`.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, StatusCode, Uri, header};
use http_body_util::BodyExt;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::sync::Arc;
use tokio::time::Instant;

use crate::backend::BackendClient;
use crate::body;
use crate::config::{JwtAlgorithm, JwtConfig};

/// Longest user id taken from a claim (as for introspection).
const MAX_USER_BYTES: usize = 256;
/// Largest JWKS document read from the backend.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Most often the backend's JWKS is fetched again for an unknown `kid`.
const JWKS_REFETCH_EVERY: Duration = Duration::from_secs(60);
/// Most often it is fetched while ssemux has no key at all (the backend was
/// down at the first token): every token is refused until it has one.
const JWKS_FIRST_FETCH_EVERY: Duration = Duration::from_secs(1);

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum JwtError {
    /// Bad signature, expired, not yet valid, wrong issuer or audience,
    /// malformed, or no usable identity claim: the tab is refused.
    #[error("token refused: {0}")]
    Refused(String),
    /// The keys could not be had (JWKS endpoint down): not the tab's fault.
    #[error("signing keys unavailable: {0}")]
    Unavailable(String),
}

/// Keys failed to load at startup.
#[derive(Debug, thiserror::Error)]
#[error("auth.jwt: {0}")]
pub struct JwtSetupError(String);

enum Keys {
    /// One key for every token.
    One(DecodingKey),
    /// A JWKS document, by `kid`.
    Set(ArcSwap<Vec<(Option<String>, DecodingKey)>>),
}

/// The verifier, built once from `[auth.jwt]`.
pub struct JwtVerifier {
    validation: Validation,
    algorithm: Algorithm,
    claim: String,
    keys: Keys,
    /// Where the JWKS is fetched from (`auth.jwt.jwks_path`), with the client.
    remote: Option<(BackendClient, Uri, Duration)>,
    /// When the remote JWKS was last fetched.
    fetched: Mutex<Option<Instant>>,
}

impl JwtVerifier {
    /// Build from the configuration, reading key files now. `jwks_url` is the
    /// backend URL of `jwks_path`, when that is the key source.
    pub fn new(
        cfg: &JwtConfig,
        client: BackendClient,
        jwks_url: Option<Uri>,
        timeout: Duration,
    ) -> Result<JwtVerifier, JwtSetupError> {
        let algorithm = match cfg.algorithm {
            JwtAlgorithm::HS256 => Algorithm::HS256,
            JwtAlgorithm::RS256 => Algorithm::RS256,
            JwtAlgorithm::ES256 => Algorithm::ES256,
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = cfg.leeway.as_secs();
        validation.validate_nbf = true;
        if cfg.issuer.is_empty() {
            validation.iss = None;
        } else {
            validation.set_issuer(&[&cfg.issuer]);
        }
        if cfg.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[&cfg.audience]);
        }
        let keys = if let Some(path) = &cfg.key_file {
            Keys::One(key_from_file(path, algorithm)?)
        } else if let Some(path) = &cfg.jwks_file {
            let text = read(path)?;
            Keys::Set(ArcSwap::from_pointee(
                parse_jwks(&text, algorithm).map_err(JwtSetupError)?,
            ))
        } else {
            Keys::Set(ArcSwap::from_pointee(Vec::new()))
        };
        Ok(JwtVerifier {
            validation,
            algorithm,
            claim: cfg.identity_claim.clone(),
            keys,
            remote: jwks_url.map(|u| (client, u, timeout)),
            fetched: Mutex::new(None),
        })
    }

    /// The user a token names, if it verifies.
    pub async fn verify(&self, token: &str) -> Result<String, JwtError> {
        let refused = |e: jsonwebtoken::errors::Error| JwtError::Refused(e.to_string());
        let head = jsonwebtoken::decode_header(token).map_err(refused)?;
        // The configured algorithm decides, never the token's header.
        if head.alg != self.algorithm {
            return Err(JwtError::Refused(format!(
                "algorithm {:?} is not the configured {:?}",
                head.alg, self.algorithm
            )));
        }
        let key = match &self.keys {
            Keys::One(k) => k.clone(),
            Keys::Set(set) => match find(&set.load(), head.kid.as_deref()) {
                Some(k) => k,
                None => {
                    let fetched = self.refetch().await?;
                    let keys = set.load();
                    if keys.is_empty() {
                        // Not the token's fault: ssemux has no key yet.
                        return Err(JwtError::Unavailable("no signing keys fetched yet".into()));
                    }
                    match find(&keys, head.kid.as_deref()) {
                        Some(k) => k,
                        // A key rotated in while fetching is held back: try
                        // again later (503), not "logged out" (401).
                        None if !fetched && self.remote.is_some() => {
                            return Err(JwtError::Unavailable(
                                "unknown kid; keys are fetched again shortly".into(),
                            ));
                        }
                        None => return Err(JwtError::Refused("no key for the token's kid".into())),
                    }
                }
            },
        };
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &self.validation)
            .map_err(refused)?;
        let user = match data.claims.get(&self.claim) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => return Err(JwtError::Refused(format!("no `{}` claim", self.claim))),
        };
        if user.is_empty() || user.len() > MAX_USER_BYTES || user.chars().any(char::is_control) {
            return Err(JwtError::Refused(format!(
                "`{}` claim empty, too long or with control characters",
                self.claim
            )));
        }
        Ok(user)
    }

    /// Fetch the backend's JWKS again, unless it was fetched within the last
    /// minute (a flood of tokens with made-up `kid`s costs one fetch a minute).
    /// Whether keys were fetched (`false`: no remote set, or held back).
    async fn refetch(&self) -> Result<bool, JwtError> {
        let (Some((client, url, timeout)), Keys::Set(set)) = (&self.remote, &self.keys) else {
            return Ok(false);
        };
        {
            let mut last = self.fetched.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let every = if set.load().is_empty() {
                JWKS_FIRST_FETCH_EVERY
            } else {
                JWKS_REFETCH_EVERY
            };
            if last.is_some_and(|at| now.duration_since(at) < every) {
                return Ok(false);
            }
            *last = Some(now);
        }
        let unavailable = |e: String| JwtError::Unavailable(e);
        let req = Request::get(url.clone())
            .header(header::ACCEPT, "application/json")
            .body(body::empty())
            .map_err(|e| unavailable(e.to_string()))?;
        let resp = tokio::time::timeout(*timeout, client.request(req))
            .await
            .map_err(|_| unavailable("timeout".into()))?
            .map_err(|e| unavailable(e.to_string()))?;
        if resp.status() != StatusCode::OK {
            return Err(unavailable(format!("JWKS answered {}", resp.status())));
        }
        let bytes = tokio::time::timeout(
            *timeout,
            http_body_util::Limited::new(resp.into_body(), MAX_JWKS_BYTES).collect(),
        )
        .await
        .map_err(|_| unavailable("timeout".into()))?
        .map_err(|e| unavailable(e.to_string()))?
        .to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        let keys = parse_jwks(&text, self.algorithm).map_err(unavailable)?;
        set.store(Arc::new(keys));
        Ok(true)
    }
}

fn find(keys: &[(Option<String>, DecodingKey)], kid: Option<&str>) -> Option<DecodingKey> {
    match kid {
        Some(kid) => keys
            .iter()
            .find(|(k, _)| k.as_deref() == Some(kid))
            .map(|(_, key)| key.clone()),
        // A token without `kid` is tried against a set of exactly one key.
        None if keys.len() == 1 => keys.first().map(|(_, k)| k.clone()),
        None => None,
    }
}

fn read(path: &Path) -> Result<String, JwtSetupError> {
    std::fs::read_to_string(path)
        .map_err(|e| JwtSetupError(format!("cannot read {}: {e}", path.display())))
}

fn key_from_file(path: &Path, algorithm: Algorithm) -> Result<DecodingKey, JwtSetupError> {
    let text = read(path)?;
    let bad = |e: jsonwebtoken::errors::Error| {
        JwtSetupError(format!("{}: not a usable key: {e}", path.display()))
    };
    match algorithm {
        Algorithm::RS256 => DecodingKey::from_rsa_pem(text.as_bytes()).map_err(bad),
        Algorithm::ES256 => DecodingKey::from_ec_pem(text.as_bytes()).map_err(bad),
        _ => {
            let secret = text.strip_suffix('\n').unwrap_or(&text);
            let secret = secret.strip_suffix('\r').unwrap_or(secret);
            if secret.len() < 16 {
                return Err(JwtSetupError(format!(
                    "{}: an HS256 secret shorter than 16 bytes is guessable",
                    path.display()
                )));
            }
            Ok(DecodingKey::from_secret(secret.as_bytes()))
        }
    }
}

/// The keys of a JWKS document usable with `algorithm`, with their `kid`s.
fn parse_jwks(
    text: &str,
    algorithm: Algorithm,
) -> Result<Vec<(Option<String>, DecodingKey)>, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("not a JWKS: {e}"))?;
    let keys: Vec<_> = set
        .keys
        .iter()
        .filter(|k| {
            k.common
                .key_algorithm
                .is_none_or(|a| a.to_string() == format!("{algorithm:?}"))
        })
        .filter_map(|k| Some((k.common.key_id.clone(), DecodingKey::from_jwk(k).ok()?)))
        .collect();
    if keys.is_empty() {
        return Err(format!("the JWKS has no key usable with {algorithm:?}"));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &str = "a-test-secret-of-some-length";

    fn verifier(cfg: JwtConfig) -> JwtVerifier {
        let client = crate::backend::backend_client(&crate::backend::ClientConfig::default())
            .expect("client");
        JwtVerifier::new(&cfg, client, None, Duration::from_secs(1)).expect("verifier")
    }

    fn hs(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("token")
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    fn hs_cfg(dir: &Path) -> JwtConfig {
        let key = dir.join("secret");
        std::fs::write(&key, format!("{SECRET}\n")).expect("write");
        JwtConfig {
            key_file: Some(key),
            issuer: "synckit".into(),
            audience: "api".into(),
            ..JwtConfig::default()
        }
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("ssemux-jwt-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[tokio::test]
    async fn claims_are_checked() {
        let v = verifier(hs_cfg(&tmp("claims")));
        let good = json!({"sub": "alice", "exp": now() + 600, "iss": "synckit", "aud": "api"});
        assert_eq!(v.verify(&hs(good.clone())).await, Ok("alice".into()));
        let mut expired = good.clone();
        expired["exp"] = json!(now() - 600);
        let mut early = good.clone();
        early["nbf"] = json!(now() + 600);
        let mut issuer = good.clone();
        issuer["iss"] = json!("other");
        let mut audience = good.clone();
        audience["aud"] = json!("other");
        let mut no_sub = good.clone();
        no_sub.as_object_mut().expect("object").remove("sub");
        let mut no_exp = good.clone();
        no_exp.as_object_mut().expect("object").remove("exp");
        for (what, claims) in [
            ("expired", expired),
            ("not yet valid", early),
            ("issuer", issuer),
            ("audience", audience),
            ("no sub", no_sub),
            ("no exp", no_exp),
        ] {
            assert!(
                matches!(v.verify(&hs(claims)).await, Err(JwtError::Refused(_))),
                "{what}"
            );
        }
        let other_key = encode(
            &Header::new(Algorithm::HS256),
            &good,
            &EncodingKey::from_secret(b"another-secret-entirely"),
        )
        .expect("token");
        assert!(v.verify(&other_key).await.is_err(), "signature");
        assert!(v.verify("not.a.token").await.is_err());
        assert!(v.verify("").await.is_err());
        // The header's `alg` cannot choose a weaker check.
        let none = format!(
            "{}.{}.",
            base64url(r#"{"alg":"none","typ":"JWT"}"#),
            base64url(&good.to_string())
        );
        assert!(v.verify(&none).await.is_err());
    }

    fn base64url(s: &str) -> String {
        base64url_bytes(s.as_bytes())
    }

    #[tokio::test]
    async fn a_jwks_file_picks_the_key_by_kid() {
        let dir = tmp("jwks");
        let jwks = dir.join("jwks.json");
        // An HS256 key as a JWK (`oct`), base64url of the secret.
        let doc = json!({"keys": [
            {"kty": "oct", "kid": "k1", "alg": "HS256", "k": base64url(SECRET)},
            {"kty": "oct", "kid": "k2", "alg": "HS256", "k": base64url("second-secret-value-xx")},
        ]});
        std::fs::write(&jwks, doc.to_string()).expect("write");
        let v = verifier(JwtConfig {
            jwks_file: Some(jwks),
            ..JwtConfig::default()
        });
        let claims = json!({"sub": 42, "exp": now() + 60});
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        let t = encode(&h, &claims, &EncodingKey::from_secret(SECRET.as_bytes())).expect("t");
        assert_eq!(v.verify(&t).await, Ok("42".into()));
        h.kid = Some("k2".into());
        let t = encode(&h, &claims, &EncodingKey::from_secret(SECRET.as_bytes())).expect("t");
        assert!(v.verify(&t).await.is_err(), "k2 is another key");
        h.kid = Some("nope".into());
        let t = encode(&h, &claims, &EncodingKey::from_secret(SECRET.as_bytes())).expect("t");
        assert!(v.verify(&t).await.is_err(), "unknown kid");
    }

    #[test]
    fn short_secrets_and_missing_files_are_refused_at_startup() {
        let dir = tmp("setup");
        let key = dir.join("short");
        std::fs::write(&key, "short").expect("write");
        let client = crate::backend::backend_client(&crate::backend::ClientConfig::default())
            .expect("client");
        for cfg in [
            JwtConfig {
                key_file: Some(key),
                ..JwtConfig::default()
            },
            JwtConfig {
                key_file: Some(dir.join("missing")),
                ..JwtConfig::default()
            },
        ] {
            assert!(JwtVerifier::new(&cfg, client.clone(), None, Duration::from_secs(1)).is_err());
        }
    }

    /// An ES256 key pair: the token signer and the public key as a JWK.
    fn es256(kid: &str) -> (EncodingKey, serde_json::Value) {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("pair");
        let point = pair.public_key().as_ref();
        let b64 = |b: &[u8]| base64url_bytes(b);
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        });
        (EncodingKey::from_ec_der(pkcs8.as_ref()), jwk)
    }

    fn base64url_bytes(b: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    fn es_token(key: &EncodingKey, kid: &str, sub: &str) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(kid.into());
        encode(&h, &json!({"sub": sub, "exp": now() + 60}), key).expect("token")
    }

    /// A backend serving `doc` as its JWKS; counts fetches.
    async fn jwks_server(
        doc: Arc<std::sync::Mutex<String>>,
    ) -> (Uri, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let fetches = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let counted = fetches.clone();
        tokio::spawn(async move {
            for _ in 0..100 {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (doc, counted) = (doc.clone(), counted.clone());
                let svc = hyper::service::service_fn(move |_req| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let text = doc.lock().expect("lock").clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(body::full(text)))
                    }
                });
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                });
            }
        });
        let url = format!("http://{addr}/.well-known/jwks.json")
            .parse()
            .expect("uri");
        (url, fetches)
    }

    #[tokio::test]
    async fn es256_from_a_backend_jwks_refetched_for_a_new_kid_at_most_once_a_minute() {
        use std::sync::atomic::Ordering;
        let (k1, jwk1) = es256("e1");
        let (k2, jwk2) = es256("e2");
        let doc = Arc::new(std::sync::Mutex::new(
            json!({"keys": [jwk1.clone()]}).to_string(),
        ));
        let (url, fetches) = jwks_server(doc.clone()).await;
        let client = crate::backend::backend_client(&crate::backend::ClientConfig::default())
            .expect("client");
        let cfg = JwtConfig {
            algorithm: JwtAlgorithm::ES256,
            jwks_path: "/.well-known/jwks.json".into(),
            ..JwtConfig::default()
        };
        let v = JwtVerifier::new(&cfg, client, Some(url), Duration::from_secs(2)).expect("v");
        assert_eq!(
            v.verify(&es_token(&k1, "e1", "alice")).await,
            Ok("alice".into())
        );
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            1,
            "fetched at the first token"
        );
        assert_eq!(
            v.verify(&es_token(&k1, "e1", "bob")).await,
            Ok("bob".into())
        );
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "then kept");
        // The backend rotates in a key: a token naming it is refused until
        // the next fetch is allowed (a flood of made-up kids costs one
        // fetch a minute), then accepted.
        *doc.lock().expect("lock") = json!({"keys": [jwk1, jwk2]}).to_string();
        assert!(v.verify(&es_token(&k2, "e2", "carol")).await.is_err());
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        *v.fetched.lock().expect("lock") = Some(Instant::now() - JWKS_REFETCH_EVERY);
        assert_eq!(
            v.verify(&es_token(&k2, "e2", "carol")).await,
            Ok("carol".into())
        );
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        // An HS256 token against the ES256 verifier: refused by algorithm.
        assert!(
            v.verify(&hs(json!({"sub": "x", "exp": now() + 60})))
                .await
                .is_err()
        );
    }
}
