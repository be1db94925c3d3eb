//! Tokens as each client sends them, and what they allow.
//!
//! - pip and twine: HTTP Basic, any user name (twine sends `__token__`) and the token as the
//!   password;
//! - npm: `Authorization: Bearer TOKEN` (its `_authToken`);
//! - cargo: `Authorization: TOKEN`, bare.
//!
//! The store keeps only a hash of each token and compares in constant time.

use axum::http::{header, HeaderMap, StatusCode};
use base64::Engine as _;
use cairn_store::admin::TokenInfo;

use crate::{ApiError, FeedServer};

/// What a request wants to do with a feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read the index and download.
    Read,
    /// Publish, yank, delete.
    Publish,
}

/// The token a request carries, if any, in any of the forms the clients use.
pub fn token_of(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    if let Some(b64) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_, password) = text.split_once(':')?;
        return Some(password.to_owned());
    }
    if let Some(t) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    {
        return Some(t.trim().to_owned());
    }
    Some(value.to_owned())
}

impl FeedServer {
    /// Checks that the request may do `access` on `feed`; anonymous reads pass where the
    /// configuration allows them.
    pub fn authorize(
        &self,
        headers: &HeaderMap,
        feed: &str,
        access: Access,
    ) -> Result<Option<TokenInfo>, ApiError> {
        let token = token_of(headers);
        // Where anyone may read, a read needs no token, and one this instance does not know
        // (npm sends its token with every request, a developer's may be another site's) does
        // not turn it away.
        if access == Access::Read && self.config().anonymous_read(feed) {
            return Ok(None);
        }
        let Some(secret) = token else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                format!("feed `{feed}` needs a token; create one with `cairn token create --scope {}:{feed}`", scope_word(access)),
            ));
        };
        let info = self
            .store()
            .token_check(&secret)
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "the token is not valid"))?;
        let allowed = match access {
            Access::Read => info.may_read(feed) || self.config().anonymous_read(feed),
            Access::Publish => info.may_publish(feed),
        };
        if !allowed {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "the token does not allow {} feed `{feed}` (it needs {}:{feed})",
                    match access {
                        Access::Read => "reading",
                        Access::Publish => "publishing to",
                    },
                    scope_word(access)
                ),
            ));
        }
        Ok(Some(info))
    }
}

fn scope_word(access: Access) -> &'static str {
    match access {
        Access::Read => "read",
        Access::Publish => "publish",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn every_client_form_yields_the_token() {
        let basic = base64::engine::general_purpose::STANDARD.encode("__token__:cairn_x_y");
        assert_eq!(
            token_of(&headers(&format!("Basic {basic}"))).as_deref(),
            Some("cairn_x_y")
        );
        assert_eq!(
            token_of(&headers("Bearer cairn_x_y")).as_deref(),
            Some("cairn_x_y")
        );
        assert_eq!(
            token_of(&headers("cairn_x_y")).as_deref(),
            Some("cairn_x_y")
        );
        assert_eq!(token_of(&headers("Basic !!!")), None);
        assert_eq!(token_of(&HeaderMap::new()), None);
    }
}
