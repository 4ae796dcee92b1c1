//! Credentials: user JWTs (HS256, `sub` = user id, `exp` required), seckill tickets, and the
//! payment webhook's signature. The gateway verifies them; the bench and the tests mint them.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use seckill_schema::ids::{ItemId, UserId};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How long a seckill ticket is good for.
pub const TICKET_TTL_SECS: i64 = 300;
/// How far a webhook's timestamp may be from our clock.
pub const WEBHOOK_TOLERANCE_SECS: i64 = 300;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
}

#[derive(Clone)]
pub struct Jwt {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Jwt {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        Jwt {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// The user a bearer token names, if it is ours and unexpired.
    pub fn verify(&self, token: &str) -> Option<UserId> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok()?;
        let id: u64 = data.claims.sub.parse().ok()?;
        (id <= i64::MAX as u64).then_some(UserId(id))
    }

    pub fn mint(&self, user: UserId, ttl_secs: i64) -> String {
        let claims = Claims {
            sub: user.0.to_string(),
            exp: chrono::Utc::now().timestamp() + ttl_secs,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }
}

/// Seckill tickets: `<user>.<item>.<expires unix secs>.<base64url HMAC-SHA256>`. Opaque to
/// clients; checking one costs one HMAC and no lookup.
#[derive(Clone)]
pub struct Tickets {
    mac: HmacSha256,
}

impl Tickets {
    pub fn new(secret: &str) -> Self {
        Tickets {
            mac: HmacSha256::new_from_slice(secret.as_bytes())
                .expect("HMAC takes keys of any length"),
        }
    }

    fn sign(&self, payload: &str) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(payload.as_bytes());
        mac
    }

    pub fn mint(&self, user: UserId, item: ItemId, expires_unix: i64) -> String {
        let payload = format!("{user}.{item}.{expires_unix}");
        let sig = URL_SAFE_NO_PAD.encode(self.sign(&payload).finalize().into_bytes());
        format!("{payload}.{sig}")
    }

    /// The user a ticket was issued to, if it is genuine, unexpired and for this item.
    pub fn verify(&self, ticket: &str, item: ItemId, now_unix: i64) -> Option<UserId> {
        let (payload, sig) = ticket.rsplit_once('.')?;
        let mut parts = payload.splitn(3, '.');
        let user: u64 = parts.next()?.parse().ok()?;
        let ticket_item: u64 = parts.next()?.parse().ok()?;
        let expires: i64 = parts.next()?.parse().ok()?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        self.sign(payload).verify_slice(&sig).ok()?;
        (ticket_item == item.0 && now_unix < expires && user <= i64::MAX as u64)
            .then_some(UserId(user))
    }
}

/// The payment webhook's `X-Seckill-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
#[derive(Clone)]
pub struct WebhookSigner {
    mac: HmacSha256,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SignatureError {
    Missing,
    Malformed,
    Stale,
    Mismatch,
}

impl WebhookSigner {
    pub fn new(secret: &str) -> Self {
        WebhookSigner {
            mac: HmacSha256::new_from_slice(secret.as_bytes())
                .expect("HMAC takes keys of any length"),
        }
    }

    fn mac(&self, t: i64, body: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    pub fn header(&self, t: i64, body: &[u8]) -> String {
        format!(
            "t={t},v1={}",
            hex::encode(self.mac(t, body).finalize().into_bytes())
        )
    }

    /// Checks a header against the raw body, in constant time, within the replay tolerance.
    pub fn verify(
        &self,
        header: Option<&str>,
        body: &[u8],
        now_unix: i64,
    ) -> Result<(), SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let mut t = None;
        let mut sigs = Vec::new();
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("t", v)) => {
                    t = Some(v.parse::<i64>().map_err(|_| SignatureError::Malformed)?)
                }
                Some(("v1", v)) => {
                    sigs.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?)
                }
                _ => {}
            }
        }
        let t = t.ok_or(SignatureError::Malformed)?;
        if sigs.is_empty() {
            return Err(SignatureError::Malformed);
        }
        if (now_unix - t).abs() > WEBHOOK_TOLERANCE_SECS {
            return Err(SignatureError::Stale);
        }
        let mac = self.mac(t, body);
        if sigs.iter().any(|s| mac.clone().verify_slice(s).is_ok()) {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_bind_user_item_and_time() {
        let t = Tickets::new("s");
        let ticket = t.mint(UserId(7), ItemId(9), 1000);
        assert_eq!(t.verify(&ticket, ItemId(9), 999), Some(UserId(7)));
        assert_eq!(t.verify(&ticket, ItemId(8), 999), None);
        assert_eq!(t.verify(&ticket, ItemId(9), 1000), None);
        assert_eq!(Tickets::new("other").verify(&ticket, ItemId(9), 999), None);
        let forged = ticket.replacen("7.", "8.", 1);
        assert_eq!(t.verify(&forged, ItemId(9), 999), None);
        assert_eq!(t.verify("garbage", ItemId(9), 0), None);
    }

    #[test]
    fn jwt_round_trip_and_rejects_other_secrets() {
        let a = Jwt::new("a");
        let token = a.mint(UserId(42), 60);
        assert_eq!(a.verify(&token), Some(UserId(42)));
        assert_eq!(Jwt::new("b").verify(&token), None);
        assert_eq!(a.verify(&a.mint(UserId(42), -60)), None);
    }

    #[test]
    fn webhook_signatures() {
        let s = WebhookSigner::new("w");
        let body = br#"{"x":1}"#;
        let h = s.header(1000, body);
        assert_eq!(s.verify(Some(&h), body, 1000), Ok(()));
        assert_eq!(s.verify(Some(&h), body, 1300), Ok(()));
        assert_eq!(s.verify(Some(&h), body, 1301), Err(SignatureError::Stale));
        assert_eq!(
            s.verify(Some(&h), b"{}", 1000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(s.verify(None, body, 1000), Err(SignatureError::Missing));
        assert_eq!(
            s.verify(Some("t=x"), body, 1000),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            WebhookSigner::new("v").verify(Some(&h), body, 1000),
            Err(SignatureError::Mismatch)
        );
    }
}
