//! A deployment's config (`models[].deployments[]`, `passthrough.deployment`): which wire
//! protocol it speaks and how to reach it, checked here so a bad one fails at start.

use serde::Deserialize;

use crate::base::{ConfigError, Secret};

/// The wire protocol a deployment speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI or any OpenAI-compatible server (vLLM, Ollama, llama.cpp, TGI).
    Openai,
    Azure,
    Anthropic,
    /// Google's Gemini API (AI Studio key).
    Gemini,
    /// Google Cloud Vertex AI (service account): Gemini and Claude models.
    Vertex,
    /// Amazon Bedrock's Converse API (SigV4).
    Bedrock,
    Local,
}

impl ProviderKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Azure => "azure",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
            Self::Vertex => "vertex",
            Self::Bedrock => "bedrock",
            Self::Local => "local",
        }
    }
}

/// One backend of a model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    pub provider: ProviderKind,
    /// Shown in `x-tollgate-deployment`; defaults to the upstream `model`.
    #[serde(default)]
    pub name: Option<String>,
    /// The upstream's API root, e.g. `https://api.openai.com/v1`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// The upstream key; the client's key is never forwarded.
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// The model name the upstream expects; defaults to the client-facing name.
    #[serde(default)]
    pub model: Option<String>,
    /// Relative share of traffic.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Upstream deadline: time to response headers (and to a non-streamed answer's whole
    /// body), and the longest gap between stream chunks. `timeouts` refines it.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// Finer upstream deadlines (connect, first byte, total); see [`TimeoutsConfig`].
    #[serde(default)]
    pub timeouts: Option<TimeoutsConfig>,
    /// Requests per minute this deployment is sent, counted in process (per replica): at
    /// the cap it is skipped for the next deployment, and when all are capped the client
    /// gets 429 `rate_limit_exceeded` with `retry-after`.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens per minute, like `rpm`; a request counts its estimated prompt tokens plus
    /// `max_tokens` (or `max_completion_tokens`) when sent.
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Azure's `api-version` query value, e.g. `2024-10-21` (required for `azure`, refused
    /// elsewhere): Azure versions its API per request, not per URL.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Azure's deployment name (required for `azure`, refused elsewhere): on Azure the
    /// deployment in the URL picks the model, not `model` in the body.
    #[serde(default)]
    pub deployment: Option<String>,
    /// `max_tokens` sent to Anthropic when the client sets neither `max_tokens` nor
    /// `max_completion_tokens` (`anthropic` only; default 4096): the Messages API requires
    /// it, OpenAI's does not.
    #[serde(default)]
    pub max_tokens_default: Option<u32>,
    /// Google Cloud project id (`vertex`, required).
    #[serde(default)]
    pub project: Option<String>,
    /// Google Cloud location (`vertex`): a region such as `us-central1` (the default) or
    /// `global`.
    #[serde(default)]
    pub location: Option<String>,
    /// A service account's JSON key file (`vertex`, required): the gateway signs its own
    /// OAuth2 token requests with it. Read and checked at start.
    #[serde(default)]
    pub credentials_file: Option<String>,
    /// AWS region (`bedrock`, required), e.g. `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// AWS access key id (`bedrock`, required).
    #[serde(default)]
    pub access_key_id: Option<Secret>,
    /// AWS secret access key (`bedrock`, required): signs requests, never sent.
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    /// AWS session token of temporary credentials (`bedrock`, optional).
    #[serde(default)]
    pub session_token: Option<Secret>,
    /// Local model folder (`provider: local`): `config.json`, `tokenizer.json`, `*.safetensors`.
    #[serde(default)]
    pub path: Option<String>,
    /// Requests that may wait for a local model's thread (`provider: local`; default 64).
    /// Beyond it the deployment answers 429 at once, so routing spills over.
    #[serde(default)]
    pub queue_size: Option<u32>,
    /// Events a local model's request may have waiting for its client (`provider: local`;
    /// default 1024). A client that far behind is cut, so the model never waits on it.
    #[serde(default)]
    pub stream_buffer: Option<u32>,
}

/// `timeouts:` of a deployment. Each is optional; absent ones keep `timeout_s`'s meaning.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// TCP (and TLS) connect; default 10 s. Exceeding it fails over to the next deployment.
    #[serde(default)]
    pub connect_s: Option<f64>,
    /// From sending the request to the response headers; default `timeout_s`. Exceeding
    /// it fails over (nothing reached the client yet).
    #[serde(default)]
    pub first_byte_s: Option<f64>,
    /// The whole exchange, to the body's last byte. A stream that runs past it ends with an
    /// error event and no `[DONE]`; unset, a stream ends after one hour
    /// (`providers::relay::DEFAULT_STREAM_TOTAL`), so an endless upstream is always cut.
    #[serde(default)]
    pub total_s: Option<f64>,
}

fn default_weight() -> u32 {
    1
}
fn default_timeout_s() -> f64 {
    60.0
}

/// Checks one deployment; `at` is its path (`models[0].deployments[1]`).
pub fn validate_deployment(at: &str, d: &DeploymentConfig) -> Result<(), ConfigError> {
    let field = |name: &str| format!("{at}.{name}");
    match d.provider {
        ProviderKind::Openai => {
            let Some(url) = d.base_url.as_deref() else {
                return Err(ConfigError::new(field("base_url"), "missing"));
            };
            validate_base_url(&field("base_url"), url)?;
        }
        ProviderKind::Azure => {
            let Some(url) = d.base_url.as_deref() else {
                return Err(ConfigError::new(
                    field("base_url"),
                    "missing (the resource endpoint, e.g. https://myres.openai.azure.com)",
                ));
            };
            validate_base_url(&field("base_url"), url)?;
            // Both go into the URL as they are: limiting them to the characters Azure
            // allows means nothing needs escaping and nothing can change the URL's shape.
            required_token(&field("deployment"), d.deployment.as_deref(), b"-_.")?;
            required_token(&field("api_version"), d.api_version.as_deref(), b"-.")?;
            required_key(&field("api_key"), d)?;
        }
        ProviderKind::Anthropic | ProviderKind::Gemini => {
            // Optional: the providers default to the vendor's API.
            if let Some(url) = d.base_url.as_deref() {
                validate_base_url(&field("base_url"), url)?;
            }
            required_key(&field("api_key"), d)?;
        }
        ProviderKind::Vertex => {
            if let Some(url) = d.base_url.as_deref() {
                validate_base_url(&field("base_url"), url)?;
            }
            // Both go into the URL (and the default host) as they are.
            required_token(&field("project"), d.project.as_deref(), b"-")?;
            if d.location.is_some() {
                required_token(&field("location"), d.location.as_deref(), b"-")?;
            }
            match d.credentials_file.as_deref() {
                None => return Err(ConfigError::new(field("credentials_file"), "missing")),
                Some(path) => super::vertex::auth::Credentials::load(path)
                    .map(drop)
                    .map_err(|why| ConfigError::new(field("credentials_file"), why))?,
            }
            if d.api_key.is_some() {
                return Err(ConfigError::new(
                    field("api_key"),
                    "not used by provider: vertex (it authenticates with credentials_file)",
                ));
            }
        }
        #[cfg(feature = "bedrock")]
        ProviderKind::Bedrock => {
            if let Some(url) = d.base_url.as_deref() {
                validate_base_url(&field("base_url"), url)?;
            }
            required_token(&field("region"), d.region.as_deref(), b"-")?;
            for (name, value) in [
                ("access_key_id", &d.access_key_id),
                ("secret_access_key", &d.secret_access_key),
            ] {
                match value {
                    None => return Err(ConfigError::new(field(name), "missing")),
                    Some(v) if v.expose().is_empty() => {
                        return Err(ConfigError::new(field(name), "must not be empty"));
                    }
                    Some(_) => {}
                }
            }
            if d.api_key.is_some() {
                return Err(ConfigError::new(
                    field("api_key"),
                    "not used by provider: bedrock (it signs with access_key_id and secret_access_key)",
                ));
            }
        }
        #[cfg(not(feature = "bedrock"))]
        ProviderKind::Bedrock => {
            return Err(ConfigError::new(
                field("provider"),
                "'bedrock' is not available in this build (built without the `bedrock` feature)",
            ));
        }
        // The folder itself is loaded (and checked) by `local::preload` at start.
        #[cfg(feature = "local")]
        ProviderKind::Local => match d.path.as_deref() {
            None => return Err(ConfigError::new(field("path"), "missing")),
            Some("") => return Err(ConfigError::new(field("path"), "must not be empty")),
            Some(_) => {}
        },
        #[cfg(not(feature = "local"))]
        ProviderKind::Local => {
            return Err(ConfigError::new(
                field("provider"),
                "'local' is not available in this build (built without the `local` feature)",
            ));
        }
    }
    // Fields of one provider on another are refused: they would silently do nothing.
    let only_for = [
        ("deployment", d.deployment.is_some(), ProviderKind::Azure),
        ("api_version", d.api_version.is_some(), ProviderKind::Azure),
        (
            "max_tokens_default",
            d.max_tokens_default.is_some(),
            ProviderKind::Anthropic,
        ),
        ("path", d.path.is_some(), ProviderKind::Local),
        ("project", d.project.is_some(), ProviderKind::Vertex),
        ("location", d.location.is_some(), ProviderKind::Vertex),
        (
            "credentials_file",
            d.credentials_file.is_some(),
            ProviderKind::Vertex,
        ),
        ("region", d.region.is_some(), ProviderKind::Bedrock),
        (
            "access_key_id",
            d.access_key_id.is_some(),
            ProviderKind::Bedrock,
        ),
        (
            "secret_access_key",
            d.secret_access_key.is_some(),
            ProviderKind::Bedrock,
        ),
        (
            "session_token",
            d.session_token.is_some(),
            ProviderKind::Bedrock,
        ),
        ("queue_size", d.queue_size.is_some(), ProviderKind::Local),
        (
            "stream_buffer",
            d.stream_buffer.is_some(),
            ProviderKind::Local,
        ),
    ];
    for (name, set, provider) in only_for {
        // Claude on Vertex AI takes Anthropic's `max_tokens_default` too.
        let shared = name == "max_tokens_default" && d.provider == ProviderKind::Vertex;
        if set && d.provider != provider && !shared {
            return Err(ConfigError::new(
                field(name),
                format!("only used by provider: {}", provider.as_str()),
            ));
        }
    }
    if d.stream_buffer == Some(0) {
        return Err(ConfigError::new(
            field("stream_buffer"),
            "must be at least 1",
        ));
    }
    if d.max_tokens_default == Some(0) {
        return Err(ConfigError::new(
            field("max_tokens_default"),
            "must be at least 1",
        ));
    }
    if let Some(key) = &d.api_key
        && !key.expose().bytes().all(|b| b.is_ascii_graphic())
    {
        // Checked here so a key with a stray newline fails at start, not on every request.
        return Err(ConfigError::new(
            field("api_key"),
            "must be printable ASCII without spaces (it is sent as a header; the value is not shown)",
        ));
    }
    if d.weight == 0 {
        return Err(ConfigError::new(field("weight"), "must be at least 1"));
    }
    if !(d.timeout_s.is_finite() && d.timeout_s > 0.0 && d.timeout_s <= 86_400.0) {
        return Err(ConfigError::new(
            field("timeout_s"),
            "must be between 0 and 86400 seconds",
        ));
    }
    if let Some(t) = &d.timeouts {
        for (name, value) in [
            ("connect_s", t.connect_s),
            ("first_byte_s", t.first_byte_s),
            ("total_s", t.total_s),
        ] {
            if let Some(v) = value
                && !(v.is_finite() && v > 0.0 && v <= 86_400.0)
            {
                return Err(ConfigError::new(
                    field(&format!("timeouts.{name}")),
                    "must be between 0 and 86400 seconds",
                ));
            }
        }
    }
    if d.rpm == Some(0) {
        return Err(ConfigError::new(field("rpm"), "must be at least 1"));
    }
    if d.tpm == Some(0) {
        return Err(ConfigError::new(field("tpm"), "must be at least 1"));
    }
    if let Some(name) = &d.name
        && (name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(ConfigError::new(
            field("name"),
            "must be non-empty printable ASCII without spaces (it is sent as a header)",
        ));
    }
    Ok(())
}

/// A required, non-empty value made of ASCII letters, digits and `extra`.
fn required_token(at: &str, value: Option<&str>, extra: &[u8]) -> Result<(), ConfigError> {
    let Some(value) = value else {
        return Err(ConfigError::new(at, "missing"));
    };
    if value.is_empty()
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
    {
        let allowed: String = extra.iter().map(|&b| char::from(b)).collect();
        return Err(ConfigError::new(
            at,
            format!("must be non-empty: letters, digits and '{allowed}' only"),
        ));
    }
    Ok(())
}

/// Hosted providers always need a key; an empty one (an unset `${VAR:-}`) is refused at
/// start rather than answered with the upstream's 401 on every request.
fn required_key(at: &str, d: &DeploymentConfig) -> Result<(), ConfigError> {
    match &d.api_key {
        Some(key) if !key.expose().is_empty() => Ok(()),
        Some(_) => Err(ConfigError::new(at, "must not be empty")),
        None => Err(ConfigError::new(at, "missing")),
    }
}

fn validate_base_url(at: &str, url: &str) -> Result<(), ConfigError> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| ConfigError::new(at, format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ConfigError::new(at, "must be an http:// or https:// URL"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(ConfigError::new(at, "must not have a query or fragment"));
    }
    Ok(())
}
