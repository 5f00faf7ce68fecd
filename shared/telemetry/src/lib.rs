//! Logs, metrics and traces, set up alike by every rfleet process.
//!
//! # Layout
//! - [`init`]: the global `tracing` subscriber: log lines to stderr (text or JSON, filtered
//!   by `log.level` / `RUST_LOG`), and, when `traces.exporter` asks, an OpenTelemetry layer
//!   (filtered on its own, so a quiet log level keeps the spans) exporting by OTLP or to
//!   Application Insights from a background thread.
//! - [`metrics`]: the process's Prometheus registry, the `/metrics` encoding (OpenMetrics
//!   or text, as the scraper asks), bucket sets, build info.
//! - [`trace`]: W3C `traceparent` parsing, continuing a trace in a span, what a published
//!   message carries, links and exception events.
//! - `process`: the `process_*` metrics, and other processes' resident memory.

pub mod metrics;
mod process;
pub mod trace;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
pub use process::resident_memory_bytes;
use settings::{LogFormat, LogSettings, TraceExporter, TraceSettings};
use tracing_subscriber::filter::{filter_fn, EnvFilter, FilterExt, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The crates whose spans become OpenTelemetry spans (others' spans, a dependency's, stay
/// local).
const TRACED_CRATES: &[&str] = &["dispatcher", "worker", "bus", "client", "rfleet", "telemetry"];

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("traces.exporter = \"azure_monitor\" needs traces.azure_connection_string or APPLICATIONINSIGHTS_CONNECTION_STRING")]
    NoConnectionString,
    #[error("the Application Insights connection string is invalid: {0}")]
    ConnectionString(String),
    #[error("cannot set up the trace exporter: {0}")]
    Exporter(String),
    #[error("traces.sample_ratio must be between 0 and 1, not {0}")]
    SampleRatio(f64),
    #[error("cannot use traces.ca_file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
}

/// What [`init`] set up; [`Telemetry::shutdown`] flushes the spans not yet exported.
#[must_use = "dropping it does not flush: call shutdown() at exit"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is buffered and stops the exporter. Blocks (at most the exporter's
    /// timeout) on a thread of its own, so it may be called from async code.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            let joined = std::thread::spawn(move || provider.shutdown()).join();
            if let Ok(Err(error)) = joined {
                tracing::warn!(%error, "traces not flushed at shutdown");
            }
        }
    }
}

/// Installs the global subscriber for a process whose default OpenTelemetry
/// `service.name` is `service`. `RUST_LOG`, when set, wins over the configured log level.
/// A second call (tests that start several services in one process) changes nothing.
pub fn init(log: &LogSettings, traces: &TraceSettings, service: &str) -> Result<Telemetry, TelemetryError> {
    if !(0.0..=1.0).contains(&traces.sample_ratio) {
        return Err(TelemetryError::SampleRatio(traces.sample_ratio));
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let fmt = match log.format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    let provider = match traces.exporter {
        TraceExporter::None => None,
        exporter => Some(provider(exporter, traces, service)?),
    };
    let otel = provider.as_ref().map(|provider| {
        let targets = TRACED_CRATES.iter().fold(Targets::new(), |t, c| t.with_target(*c, tracing::Level::INFO));
        // Spans only: log lines stay log lines (they carry the trace id), rather than
        // becoming span events exported with every span; exception events are added
        // explicitly (`trace::exception`). No source locations, thread names or busy/idle
        // times either: attributes allocated and exported per span, that nobody asked for.
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("rfleet"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(targets.and(filter_fn(|metadata| metadata.is_span())))
    });
    let installed = tracing_subscriber::registry().with(fmt.with_filter(filter)).with(otel).try_init().is_ok();
    if installed {
        trace::set_exporting(provider.is_some());
        trace::set_sample_ratio(traces.sample_ratio);
    }
    Ok(Telemetry { provider: provider.filter(|_| installed) })
}

fn provider(
    exporter: TraceExporter,
    traces: &TraceSettings,
    service: &str,
) -> Result<SdkTracerProvider, TelemetryError> {
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        let name = traces.service_name.clone().unwrap_or_else(|| service.to_string());
        resource = resource.with_service_name(name);
    }
    let builder = SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(traces.sample_ratio))));
    let client = http_client(traces.ca_file.as_deref())?;
    let builder = match exporter {
        TraceExporter::None => unreachable!("no provider without an exporter"),
        TraceExporter::Otlp => {
            use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
            // Endpoint, headers and timeout come from the OTEL_EXPORTER_OTLP_* variables,
            // read by the exporter itself.
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_http_client(client)
                .build()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
            builder.with_batch_exporter(exporter)
        }
        TraceExporter::AzureMonitor => {
            let connection_string = match &traces.azure_connection_string {
                Some(secret) => secret.expose_secret().to_string(),
                None => std::env::var("APPLICATIONINSIGHTS_CONNECTION_STRING")
                    .map_err(|_| TelemetryError::NoConnectionString)?,
            };
            // The parse error names the part that is wrong, never the key.
            let exporter =
                opentelemetry_application_insights::Exporter::new_from_connection_string(connection_string, client)
                    .map_err(|e| TelemetryError::ConnectionString(e.to_string()))?
                    // A ratio: the crate sends it as the percentage Application Insights wants
                    // (each item then stands for 100 / sampleRate items).
                    .with_sample_rate(traces.sample_ratio);
            builder.with_batch_exporter(exporter)
        }
    };
    Ok(builder.build())
}

/// The exporters' HTTP client: blocking (it runs on the batch processor's own thread),
/// rustls with ring and the webpki roots, so HTTPS collectors need no system trust store
/// (the dispatcher image has none), plus the CAs of `traces.ca_file`. Built on a thread of
/// its own: reqwest's blocking client must not be made inside an async runtime.
fn http_client(ca_file: Option<&Path>) -> Result<reqwest_otel::blocking::Client, TelemetryError> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = ca_file {
        add_ca_file(&mut roots, path)?;
    }
    let built = std::thread::spawn(move || {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        reqwest_otel::blocking::Client::builder().tls_backend_preconfigured(tls).build().map_err(|e| e.to_string())
    })
    .join();
    match built {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(message)) => Err(TelemetryError::Exporter(message)),
        Err(_) => Err(TelemetryError::Exporter("building the HTTP client panicked".into())),
    }
}

/// Adds every certificate of the PEM file `path` to `roots`; a file that cannot be read,
/// holds none, or holds one that cannot be a trust anchor is an error at start-up rather
/// than every export failing its handshake later.
fn add_ca_file(roots: &mut rustls::RootCertStore, path: &Path) -> Result<(), TelemetryError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let error = |reason: String| TelemetryError::CaFile { path: path.to_path_buf(), reason };
    let pem = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let mut added = 0;
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        roots.add(certificate.map_err(|e| error(e.to_string()))?).map_err(|e| error(e.to_string()))?;
        added += 1;
    }
    if added == 0 {
        return Err(error("it holds no PEM certificate".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_files_that_cannot_be_used_are_refused() {
        let dir = std::env::temp_dir().join(format!("telemetry-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let check = |name: &str, text: Option<&str>, expected: &str| {
            let path = dir.join(name);
            if let Some(text) = text {
                std::fs::write(&path, text).unwrap();
            }
            let mut roots = rustls::RootCertStore::empty();
            let error = add_ca_file(&mut roots, &path).unwrap_err().to_string();
            assert!(error.starts_with(&format!("cannot use traces.ca_file {}: ", path.display())), "{error}");
            assert!(error.ends_with(expected), "{name}: {error}");
        };
        check("missing.pem", None, "No such file or directory (os error 2)");
        check("empty.pem", Some("no certificate here\n"), "it holds no PEM certificate");
        let not_a_ca = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        check("garbage.pem", Some(not_a_ca), "");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
