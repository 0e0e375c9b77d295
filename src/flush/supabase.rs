//! The Supabase REST client: the only code that speaks PostgREST.
//!
//! Upserts go to `POST {rest}/sessions?on_conflict=id` with
//! `Prefer: resolution=merge-duplicates,return=minimal`, one batch per request; reads of a
//! single session go to `GET {rest}/sessions?id=eq.<id>`; erasures to
//! `POST {rest}/rpc/erase_session` (migration 0004: the row deleted and the id remembered,
//! so no later upsert re-creates it). Both authenticate with the
//! role's key as a bearer token (PostgREST takes the database role from it) and with the API
//! key as `apikey` (Supabase's API gateway admits only the project's own keys there): the
//! same key unless `SUPABASE_API_KEY` is set.

use std::time::Duration;

use http::StatusCode;

/// Where and how to reach Supabase.
#[derive(Clone, Debug)]
pub struct SupabaseConfig {
    /// The REST root, e.g. `https://<project>.supabase.co/rest/v1`.
    pub rest_url: String,
    pub service_role_key: String,
    /// Sent as `apikey` instead of the service role key: a project key, when the bearer is
    /// the token of a narrower role (`deploy/README.md`, "A database role of the gateway's own").
    pub api_key: Option<String>,
    pub request_timeout: Duration,
}

/// Why a request did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum SupabaseError {
    /// Worth retrying as it is: network trouble, 408/429/5xx, a statement timeout (57014),
    /// or a deployment problem (401/403/404) that no row can fix.
    #[error("supabase unavailable: {0}")]
    Retryable(String),
    /// The rows themselves were refused (a constraint, a malformed value).
    #[error("supabase refused the rows ({status}): {body}")]
    Rejected { status: u16, body: String },
}

/// A cheap-to-clone PostgREST client.
#[derive(Clone)]
pub struct Supabase {
    http: reqwest::Client,
    sessions_url: String,
    erase_url: String,
    key: String,
    api_key: String,
}

impl Supabase {
    pub fn new(config: &SupabaseConfig) -> Result<Supabase, SupabaseError> {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| SupabaseError::Retryable(format!("cannot build the HTTP client: {e}")))?;
        let rest = config.rest_url.trim_end_matches('/');
        Ok(Supabase {
            http,
            sessions_url: format!("{rest}/sessions"),
            erase_url: format!("{rest}/rpc/erase_session"),
            key: config.service_role_key.clone(),
            api_key: config
                .api_key
                .clone()
                .unwrap_or_else(|| config.service_role_key.clone()),
        })
    }

    /// Upserts a JSON array of rows; the version guard in the database keeps the newest.
    pub async fn upsert(&self, rows: Vec<u8>) -> Result<(), SupabaseError> {
        let response = self
            .http
            .post(format!("{}?on_conflict=id", self.sessions_url))
            .header("apikey", &self.api_key)
            .bearer_auth(&self.key)
            .header("content-type", "application/json")
            .header("prefer", "resolution=merge-duplicates,return=minimal")
            .body(rows)
            .send()
            .await
            .map_err(unreachable)?;
        check(response).await.map(|_| ())
    }

    /// The stored row of one session as JSON text (`None` when there is none).
    pub async fn fetch(&self, id: &uuid::Uuid) -> Result<Option<Vec<u8>>, SupabaseError> {
        let response = self
            .http
            .get(&self.sessions_url)
            .query(&[("id", format!("eq.{}", id.hyphenated()))])
            .header("apikey", &self.api_key)
            .bearer_auth(&self.key)
            .header("accept", "application/vnd.pgrst.object+json")
            .send()
            .await
            .map_err(unreachable)?;
        // With the singular media type PostgREST answers 406 when no row matched.
        if response.status() == StatusCode::NOT_ACCEPTABLE {
            return Ok(None);
        }
        check(response).await.map(Some)
    }
}

impl Supabase {
    /// Deletes a session's row, and keeps any write-behind still in flight from writing it
    /// again; done also when there was no row.
    pub async fn erase(&self, id: &uuid::Uuid) -> Result<(), SupabaseError> {
        let body = format!(r#"{{"session_id":"{}"}}"#, id.hyphenated());
        let response = self
            .http
            .post(&self.erase_url)
            .header("apikey", &self.api_key)
            .bearer_auth(&self.key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(unreachable)?;
        check(response).await.map(|_| ())
    }
}

/// A request that got no answer. Without its URL: the URL of a lookup holds a session id,
/// which must not reach a log.
fn unreachable(error: reqwest::Error) -> SupabaseError {
    SupabaseError::Retryable(error.without_url().to_string())
}

/// Classifies a response: 2xx is success; see [`SupabaseError`] for the rest.
async fn check(response: reqwest::Response) -> Result<Vec<u8>, SupabaseError> {
    let status = response.status();
    let body = response.bytes().await.map_err(unreachable)?;
    if status.is_success() {
        return Ok(body.to_vec());
    }
    let text = String::from_utf8_lossy(&body)
        .chars()
        .take(1000)
        .collect::<String>();
    let retryable = status.is_server_error()
        || matches!(status.as_u16(), 401 | 403 | 404 | 408 | 429)
        || text.contains("\"57014\"");
    if retryable {
        Err(SupabaseError::Retryable(format!("{status}: {text}")))
    } else {
        Err(SupabaseError::Rejected {
            status: status.as_u16(),
            body: text,
        })
    }
}
