//! rfleet's configuration: one typed [`Settings`] struct, loaded once and passed down.
//!
//! Layers, later ones win: built-in defaults < `rfleet.toml` (or the file given with
//! `--config` / `RFLEET_CONFIG`) < `RFLEET_*` environment variables (sections joined with
//! `__`, e.g. `RFLEET_SERVER__LISTEN`) < command-line flags. Unknown keys in any layer
//! are an error, so a typo never silently falls back to a default.
//!
//! Secret settings (the broker URL's password, API keys) are typed [`Secret`] or
//! [`SecretUrl`]: `Debug` and `Serialize` (so logs and `rfleet config`) show them redacted,
//! and only `expose_secret()` at the point of use reads them.

pub mod auth;
pub mod manifest;
pub mod secret;
pub mod tls;
pub mod traffic;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use manifest::{Manifest, ManifestError, ManifestMetrics};
pub use protocol::message::SplitPolicy;
pub use secret::{Secret, SecretUrl};

/// The environment variable prefix; `RFLEET_CONFIG` names the config file and is not a key.
pub const ENV_PREFIX: &str = "RFLEET";
pub const CONFIG_FILE_ENV: &str = "RFLEET_CONFIG";
pub const DEFAULT_CONFIG_FILE: &str = "rfleet.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub models: ModelsSettings,
    pub workers: WorkerSettings,
    pub bus: BusSettings,
    pub log: LogSettings,
    pub metrics: MetricsSettings,
    pub traces: TraceSettings,
    pub auth: auth::AuthSettings,
    pub tls: tls::TlsSettings,
}

/// The HTTP front (dispatcher).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address to listen on; port 0 picks a free port (printed at start-up).
    pub listen: String,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Most rows one request may carry; more get 413.
    pub max_rows: usize,
    /// Requests waiting for a reply at once; beyond it, 503 with `Retry-After`.
    pub max_inflight: usize,
    /// Deadline given to a request that names none (`x-rfleet-timeout-ms` overrides it).
    pub request_timeout_ms: u64,
    /// On SIGTERM, how long in-flight HTTP requests may take to finish.
    pub drain_timeout_ms: u64,
}

/// Where model packages live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsSettings {
    /// A directory of model packages (one sub-directory each), or one package itself.
    pub dir: PathBuf,
    /// The model `POST /score` uses when several are served.
    pub default: Option<String>,
    /// A package that fails to load stops the worker from starting (for deployments that
    /// must fail on a broken package). By default it is reported in `GET /models` and the
    /// logs, its routes answer 503 naming the error, and the other models serve.
    pub strict: bool,
    /// How often a worker looks in `dir` for packages added, changed or removed, and loads
    /// them without a restart (0: never; packages are read once at start).
    pub poll_interval_ms: u64,
    /// Dispatcher: a TOML file of traffic splits per model (weights per version, a mirror),
    /// re-read when it changes (README "Rolling out a new model version").
    pub traffic_file: Option<PathBuf>,
    /// Dispatcher: how long a model version stays known after the last worker serving it
    /// was forgotten (0: forgotten with it). For fleets scaled to zero (KEDA
    /// `minReplicaCount: 0`): their requests are published and wait in the version's queue,
    /// which starts a worker, instead of being refused as an unknown model, and the
    /// dispatcher stays ready meanwhile.
    pub keep_idle_ms: u64,
}

/// A worker: its pool of R host processes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// R host processes per worker; 0 means one per available core.
    pub n_hosts: usize,
    /// A host that takes longer than this for one request is killed and replaced.
    pub host_timeout_ms: u64,
    /// Time allowed for a host to start R and load every model.
    pub host_start_timeout_ms: u64,
    /// Recycle a host after this many R calls (0: never); a batch, or one host's part of
    /// a split request, is one call.
    pub max_requests_per_host: u64,
    /// Recycle a host whose resident memory exceeds this many MiB (0: never).
    pub max_host_rss_mib: u64,
    /// Requests a worker holds beyond those its hosts are scoring.
    pub queue_capacity: usize,
    /// The `rfleet-rhost` binary; by default the one next to the running executable.
    pub rhost_path: Option<PathBuf>,
    /// This worker's name in replies and logs; by default `hostname-pid`.
    pub id: Option<String>,
    /// On SIGTERM, how long in-flight requests may take to finish; the rest go back to
    /// the queue.
    pub drain_timeout_ms: u64,
    /// On SIGTERM over a broker, how long a worker goes on taking requests after it has
    /// announced that it is draining, so that every dispatcher has heard before its queues
    /// lose a consumer (requests published meanwhile are still served).
    pub drain_notice_ms: u64,
    /// Queued requests for the same model and predict type are scored in one R call of
    /// at most this many rows (a larger request goes alone); 0 or 1 turns batching off.
    pub max_batch_rows: usize,
    /// How long a batch may wait for more requests before it starts (0: batch only what
    /// is already queued). A request never waits more than half its time to deadline.
    pub max_batch_wait_ms: u64,
    /// Splitting one request across hosts: `auto` (only while at least two hosts are idle
    /// and nothing is queued), `never`, or `always` (across every host, waiting for them).
    pub split: SplitPolicy,
    /// Row splitting needs at least this many rows; below it only a random forest is split
    /// (by trees).
    pub split_min_rows: usize,
    /// The engine of models whose `model.toml` names none: `auto` (the native engine once a
    /// model's self-check at load has passed, else R), `r` (R only: the switch that turns
    /// the native engine off for a whole worker), or `native`.
    pub engine: protocol::Engine,
}

/// The message bus between dispatchers and workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusSettings {
    pub kind: BusKind,
    /// Embedded bus: the one queue every model's requests share.
    pub request_queue: String,
    /// Embedded bus: messages it holds before publishers get 503.
    pub capacity: usize,
    /// AMQP: the broker, `amqp://user:password@host:port/vhost` (`%2f` is the default vhost),
    /// or `amqps://...` (port 5671 by default) for TLS. Printed and logged without its password.
    pub url: SecretUrl,
    /// AMQP over TLS (`amqps://`, and Service Bus): a PEM file of CA certificates trusted
    /// for the broker's certificate (and Entra ID's token endpoint), besides the public web
    /// CAs built in; read again for every new connection.
    pub ca_file: Option<PathBuf>,
    /// AMQP: requests for model `m` go to the queue `<queue_prefix><m>`.
    pub queue_prefix: String,
    /// AMQP: `classic` (lowest latency) or `quorum` (replicated, survives a node loss).
    pub queue_type: QueueType,
    /// AMQP: where requests that can never be served go, with their reason.
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    /// AMQP: the fanout exchange workers announce their models and hosts on.
    pub catalog_exchange: String,
    /// How often a worker announces itself; a dispatcher forgets a worker after three
    /// intervals without news.
    pub announce_interval_ms: u64,
    /// AMQP: unacknowledged deliveries per worker and model queue (`basic.qos`); 0 = hosts +
    /// `workers.max_batch_rows`, at least twice the hosts, at most 256.
    pub prefetch: u16,
    /// `kind = "servicebus"`: Azure Service Bus, or a plain AMQP 1.0 broker.
    pub servicebus: ServiceBusSettings,
}

/// The AMQP 1.0 transport (`bus.kind = "servicebus"`): Azure Service Bus, reached with a
/// connection string (SAS) or a namespace and Entra ID (workload identity on AKS); or, with
/// `dialect = "broker"`, a plain AMQP 1.0 broker at `bus.url` (RabbitMQ's AMQP 1.0 plugin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceBusSettings {
    pub dialect: AmqpDialect,
    /// `Endpoint=sb://NS.servicebus.windows.net/;SharedAccessKeyName=…;SharedAccessKey=…`
    /// (as the Azure portal shows it; `UseDevelopmentEmulator=true` for a local emulator).
    /// Printed and logged as `***`. Without it, `namespace` and Entra ID are used.
    pub connection_string: Option<Secret>,
    /// `NS.servicebus.windows.net`, signed in with Entra ID (`azure_identity`: workload
    /// identity when `AZURE_FEDERATED_TOKEN_FILE` is set, as on AKS, else the managed
    /// identity). Used when `connection_string` is not set.
    pub namespace: Option<String>,
    /// The session-enabled queue every dispatcher takes its replies from, each on its own
    /// session id.
    pub reply_queue: String,
    /// The queue workers announce their models on (read by every dispatcher without
    /// taking the messages off it).
    pub catalog_queue: String,
}

/// What kind of AMQP 1.0 peer `bus.kind = "servicebus"` speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AmqpDialect {
    /// Azure Service Bus: CBS tokens, peek-lock with `$management`, sessions for replies.
    #[default]
    Servicebus,
    /// A plain AMQP 1.0 broker at `bus.url` (SASL PLAIN), e.g. RabbitMQ's `rabbitmq_amqp1_0`:
    /// `released` for abandon, dead-lettering by the broker's policy.
    Broker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BusKind {
    /// In-process channels; dispatcher and worker share one process (`rfleet serve`).
    #[default]
    Embedded,
    /// RabbitMQ (AMQP 0-9-1).
    Amqp,
    /// AMQP 1.0: Azure Service Bus, or a plain AMQP 1.0 broker (`[bus.servicebus]`).
    Servicebus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum QueueType {
    #[default]
    Classic,
    Quorum,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// A `tracing` filter: `info`, `rfleet=debug,worker=trace`, ...
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Prometheus metrics: `GET /metrics` on the dispatcher, and on the worker's own listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Record metrics and serve `GET /metrics`.
    pub enabled: bool,
    /// The worker's own HTTP listener (`/metrics`, `/live`, `/ready`), e.g. `0.0.0.0:9464`;
    /// none by default. `rfleet serve` needs none: its dispatcher's `/metrics` holds both.
    pub listen: Option<String>,
}

/// OpenTelemetry traces, off by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraceSettings {
    pub exporter: TraceExporter,
    /// The share of new traces sampled, 0.0 … 1.0; a request whose incoming `traceparent`
    /// says sampled is sampled whatever this says (parent-based).
    pub sample_ratio: f64,
    /// OpenTelemetry's `service.name`; by default `rfleet-dispatcher`, `rfleet-worker` or
    /// `rfleet` (serve). `OTEL_SERVICE_NAME` wins when set.
    pub service_name: Option<String>,
    /// Application Insights' connection string (`InstrumentationKey=…;IngestionEndpoint=…`),
    /// for `exporter = "azure_monitor"`; else `APPLICATIONINSIGHTS_CONNECTION_STRING`.
    pub azure_connection_string: Option<Secret>,
    /// A PEM file of CA certificates the exporters trust for the collector's HTTPS
    /// certificate, besides the public web CAs built in: a private collector, or a proxy
    /// that terminates TLS. (Application Insights' exporter always speaks HTTPS.)
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TraceExporter {
    /// No spans leave the process (logs still carry trace ids).
    #[default]
    None,
    /// OTLP over HTTP/protobuf; endpoint and headers from the standard
    /// `OTEL_EXPORTER_OTLP_*` variables.
    Otlp,
    /// Azure Monitor Application Insights, from a connection string.
    AzureMonitor,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings { enabled: true, listen: None }
    }
}

impl Default for TraceSettings {
    fn default() -> Self {
        TraceSettings {
            exporter: TraceExporter::None,
            sample_ratio: 1.0,
            service_name: None,
            azure_connection_string: None,
            ca_file: None,
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: "127.0.0.1:8000".into(),
            max_body_bytes: 16 * 1024 * 1024,
            max_rows: 1_000_000,
            max_inflight: 1024,
            request_timeout_ms: 30_000,
            drain_timeout_ms: 25_000,
        }
    }
}

impl Default for ModelsSettings {
    fn default() -> Self {
        ModelsSettings {
            dir: PathBuf::from("models"),
            default: None,
            strict: false,
            poll_interval_ms: 2000,
            traffic_file: None,
            keep_idle_ms: 0,
        }
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            n_hosts: 0,
            host_timeout_ms: 60_000,
            host_start_timeout_ms: 120_000,
            max_requests_per_host: 0,
            max_host_rss_mib: 0,
            queue_capacity: 1024,
            rhost_path: None,
            id: None,
            drain_timeout_ms: 25_000,
            drain_notice_ms: 1000,
            max_batch_rows: 256,
            max_batch_wait_ms: 0,
            split: SplitPolicy::Auto,
            split_min_rows: 1000,
            engine: protocol::Engine::Auto,
        }
    }
}

impl Default for BusSettings {
    fn default() -> Self {
        BusSettings {
            kind: BusKind::Embedded,
            request_queue: "rfleet.requests".into(),
            capacity: 4096,
            url: SecretUrl::from("amqp://guest:guest@127.0.0.1:5672/%2f"),
            ca_file: None,
            queue_prefix: "rfleet.model.".into(),
            queue_type: QueueType::Classic,
            dead_letter_exchange: "rfleet.dead".into(),
            dead_letter_queue: "rfleet.dead".into(),
            catalog_exchange: "rfleet.catalog".into(),
            announce_interval_ms: 2000,
            prefetch: 0,
            servicebus: ServiceBusSettings::default(),
        }
    }
}

impl Default for ServiceBusSettings {
    fn default() -> Self {
        ServiceBusSettings {
            dialect: AmqpDialect::Servicebus,
            connection_string: None,
            namespace: None,
            reply_queue: "rfleet.replies".into(),
            catalog_queue: "rfleet.catalog".into(),
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings { level: "info".into(), format: LogFormat::Text }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("invalid configuration: {0}")]
    Config(#[from] config::ConfigError),
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
}

/// Where settings come from: the optional file, the environment, and flag overrides as
/// dotted keys (`server.listen`). Tests pass their own environment instead of the process's.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub file: Option<PathBuf>,
    pub env: HashMap<String, String>,
    pub overrides: Vec<(String, String)>,
}

impl Sources {
    /// The process's own environment, the file it names (or `./rfleet.toml` if present).
    pub fn from_process(file_flag: Option<PathBuf>, overrides: Vec<(String, String)>) -> Self {
        let env: HashMap<String, String> = std::env::vars().collect();
        let file = file_flag
            .or_else(|| env.get(CONFIG_FILE_ENV).map(PathBuf::from))
            .or_else(|| Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()));
        Sources { file, env, overrides }
    }
}

impl Settings {
    pub fn load(sources: &Sources) -> Result<Settings, SettingsError> {
        // No layer of defaults: every section is `#[serde(default)]`, so what no source
        // sets comes from `Default`. (A layer made by serializing `Settings::default()` would
        // hold the redacted form of every secret, not the secret.)
        let mut builder = config::Config::builder();
        if let Some(file) = &sources.file {
            if !file.exists() {
                return Err(SettingsError::MissingFile(file.clone()));
            }
            builder = builder.add_source(config::File::from(file.as_path()).format(config::FileFormat::Toml));
        }
        let env: HashMap<String, String> = sources
            .env
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}_")) && k.as_str() != CONFIG_FILE_ENV)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        for (key, value) in &sources.overrides {
            builder = builder.set_override(key.as_str(), value.as_str())?;
        }
        Ok(builder.build()?.try_deserialize()?)
    }

    /// The model directory, resolved against `base` when relative.
    pub fn models_dir(&self, base: &Path) -> PathBuf {
        base.join(&self.models.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(file: Option<&str>, env: &[(&str, &str)], flags: &[(&str, &str)], expected: Result<Settings, &str>) {
        let dir = std::env::temp_dir().join(format!("rfleet-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = file.map(|text| {
            let path = dir.join(format!("{:x}.toml", text.len() * 7919 + env.len()));
            std::fs::write(&path, text).unwrap();
            path
        });
        let sources = Sources {
            file: path,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            overrides: flags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        match (Settings::load(&sources), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want),
            (Err(got), Err(want)) => {
                assert!(got.to_string().contains(want), "error {got} does not mention {want}")
            }
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn layers_and_unknown_keys() {
        let defaults = Settings::default();
        check(None, &[], &[], Ok(defaults.clone()));

        let mut from_file = defaults.clone();
        from_file.server.listen = "0.0.0.0:9000".into();
        from_file.workers.n_hosts = 3;
        let file = "[server]\nlisten = \"0.0.0.0:9000\"\n[workers]\nn_hosts = 3\n";
        check(Some(file), &[], &[], Ok(from_file.clone()));

        // environment beats the file, flags beat the environment
        let mut layered = from_file.clone();
        layered.workers.n_hosts = 5;
        layered.server.max_body_bytes = 10;
        layered.server.listen = "127.0.0.1:1".into();
        check(
            Some(file),
            &[
                ("RFLEET_WORKERS__N_HOSTS", "5"),
                ("RFLEET_SERVER__MAX_BODY_BYTES", "10"),
                ("RFLEET_CONFIG", "x"),
                ("HOME", "/"),
            ],
            &[("server.listen", "127.0.0.1:1")],
            Ok(layered),
        );

        check(Some("[server]\nlisen = \"x\"\n"), &[], &[], Err("unknown field `lisen`"));
        check(Some("[sever]\n"), &[], &[], Err("unknown field `sever`"));
        check(None, &[("RFLEET_WORKERS__NHOSTS", "2")], &[], Err("unknown field `nhosts`"));
        check(None, &[("RFLEET_WORKERS__N_HOSTS", "two")], &[], Err("n_hosts"));
    }

    #[test]
    fn batching_and_splitting() {
        let mut tuned = Settings::default();
        tuned.workers.max_batch_rows = 64;
        tuned.workers.max_batch_wait_ms = 2;
        tuned.workers.split = SplitPolicy::Always;
        tuned.workers.split_min_rows = 10;
        let file = "[workers]\nmax_batch_rows = 64\nmax_batch_wait_ms = 2\nsplit = \"always\"\nsplit_min_rows = 10\n";
        check(Some(file), &[], &[], Ok(tuned.clone()));
        tuned.workers.split = SplitPolicy::Never;
        check(Some(file), &[("RFLEET_WORKERS__SPLIT", "never")], &[], Ok(tuned));
        check(None, &[("RFLEET_WORKERS__SPLIT", "sometimes")], &[], Err("sometimes"));
    }

    /// Issue 8: `rfleet config` and the settings' `Debug` printed `bus.url` with its
    /// password. Secrets from every layer load as given and are shown only redacted.
    #[test]
    fn secrets_load_from_every_layer_and_are_shown_redacted() {
        let url = |password: &str| format!("amqp://rfleet:{password}@broker.example:5672/%2f");
        let with = |password: &str| {
            let mut settings = Settings::default();
            settings.bus.url = url(password).into();
            settings.auth.primary_key = Some("primary-key-from-env-0123".into());
            settings
        };
        let key = ("RFLEET_AUTH__PRIMARY_KEY", "primary-key-from-env-0123");
        let file = format!("[bus]\nurl = \"{}\"\n", url("pw-from-file"));
        check(Some(&file), &[key], &[], Ok(with("pw-from-file")));
        let env_url = url("pw-from-env");
        check(Some(&file), &[key, ("RFLEET_BUS__URL", &env_url)], &[], Ok(with("pw-from-env")));
        let flag_url = url("pw-from-flag");
        check(Some(&file), &[key, ("RFLEET_BUS__URL", &env_url)], &[("bus.url", &flag_url)], Ok(with("pw-from-flag")));

        let settings = with("pw-from-flag");
        assert_eq!(settings.bus.url.expose_secret(), flag_url);
        let printed = toml::to_string_pretty(&settings).unwrap();
        let debug = format!("{settings:?}");
        for shown in [&printed, &debug] {
            assert!(!shown.contains("pw-from-flag") && !shown.contains("primary-key-from-env"), "{shown}");
            assert!(shown.contains("amqp://rfleet:***@broker.example:5672/%2f"), "{shown}");
        }
        assert!(printed.contains("primary_key = \"***\""), "{printed}");
        assert!(debug.contains("primary_key: Some(\"***\")"), "{debug}");

        // Printed settings read back as themselves, but for the secrets, which read back
        // as the redacted form (and say so).
        let read_back: Settings = toml::from_str(&printed).unwrap();
        assert!(
            read_back.bus.url.is_redacted() && read_back.auth.primary_key.as_ref().is_some_and(Secret::is_redacted)
        );
        let mut unredacted = read_back.clone();
        unredacted.bus.url = settings.bus.url.clone();
        unredacted.auth.primary_key = settings.auth.primary_key.clone();
        assert_eq!(unredacted, settings);
    }
}
