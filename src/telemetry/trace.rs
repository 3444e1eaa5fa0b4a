//! Logs and traces: one tracing subscriber with a log layer (text or JSON, level from RUST_LOG) and,
//! when an OTLP endpoint is configured, an OpenTelemetry layer exporting the operator's spans over
//! OTLP/HTTP (protobuf). The exporter reads the standard variables itself
//! (OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, _HEADERS, _TIMEOUT, OTEL_SERVICE_NAME,
//! OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER[_ARG]); `--otlp-endpoint` takes precedence.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry::{KeyValue, global};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// The annotation on a KubeDirectorCluster that carries its creator's W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// Its optional companion (vendor-specific trace state).
pub const TRACESTATE: &str = "tracestate";

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("installing the log and trace subscriber: {0}")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
}

/// Where and as whom spans are exported.
#[derive(Clone, Debug, Default)]
pub struct TraceOptions {
    /// OTLP/HTTP base URL (e.g. http://jaeger:4318); `None` = from the OTEL_* variables, if any.
    pub endpoint: Option<String>,
    /// This replica's identity, exported as `service.instance.id`.
    pub replica: String,
    /// Log lines as JSON objects instead of text.
    pub json_logs: bool,
}

/// Holds the exporter; `shutdown` flushes the spans not yet sent.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes and stops the exporter. Blocking (the exporter runs on its own thread), so async
    /// callers run it through `spawn_blocking`.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("flushing traces failed: {e}");
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Whether spans should be exported: an endpoint is configured and the standard switches do not
/// turn export off (OTEL_SDK_DISABLED=true, OTEL_TRACES_EXPORTER=none).
pub fn export_wanted(endpoint: Option<&str>, vars: &dyn Fn(&str) -> Option<String>) -> bool {
    let disabled = vars("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || vars("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
    let configured = endpoint.is_some()
        || vars("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        || vars("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
    configured && !disabled
}

/// Installs the global subscriber. The log layer follows RUST_LOG (default `info,kube=warn`); the
/// trace layer takes the operator's own info spans whatever the log level.
pub fn init(options: &TraceOptions) -> Result<Telemetry, TraceError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    let logs: Box<dyn Layer<Registry> + Send + Sync> = if options.json_logs {
        tracing_subscriber::fmt::layer().json().with_filter(filter).boxed()
    } else {
        tracing_subscriber::fmt::layer().with_filter(filter).boxed()
    };
    let provider = if export_wanted(options.endpoint.as_deref(), &env) {
        Some(provider(options)?)
    } else {
        None
    };
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("kubedirector"))
            .with_filter(Targets::new().with_target("kubedirector", LevelFilter::INFO))
    });
    Registry::default().with(logs).with(traces).try_init()?;
    if let Some(p) = &provider {
        global::set_tracer_provider(p.clone());
    }
    Ok(Telemetry { provider })
}

fn provider(options: &TraceOptions) -> Result<SdkTracerProvider, TraceError> {
    let mut exporter = SpanExporter::builder().with_http();
    if let Some(endpoint) = &options.endpoint {
        // The flag names the collector's base URL, like OTEL_EXPORTER_OTLP_ENDPOINT.
        exporter = exporter.with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')));
    }
    let mut resource =
        Resource::builder().with_attribute(KeyValue::new("service.instance.id", options.replica.clone()));
    if env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("kubedirector");
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter.build()?)
        .with_resource(resource.build())
        .build())
}

/// The creator's span context from a CR's annotations (`traceparent`, optional `tracestate`);
/// `None` when absent or malformed.
pub fn creator_context(annotations: &std::collections::BTreeMap<String, String>) -> Option<SpanContext> {
    let parent = annotations.get(TRACEPARENT).filter(|p| well_formed(p.trim()))?;
    let mut carrier = HashMap::from([(TRACEPARENT.to_string(), parent.trim().to_string())]);
    if let Some(state) = annotations.get(TRACESTATE) {
        carrier.insert(TRACESTATE.to_string(), state.clone());
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    let span_context = cx.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

/// W3C trace-context shape: `version-traceid-parentid-flags`, lowercase hex of 2, 32, 16 and 2
/// digits (the SDK's parser also takes shorter ids, which other tools would reject); version ff is
/// invalid, version 00 has exactly four fields, later versions may append more.
fn well_formed(traceparent: &str) -> bool {
    let fields: Vec<&str> = traceparent.split('-').collect();
    let hex =
        |f: &str, len: usize| f.len() == len && f.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    fields.len() >= 4
        && hex(fields[0], 2)
        && fields[0] != "ff"
        && (fields[0] != "00" || fields.len() == 4)
        && hex(fields[1], 32)
        && hex(fields[2], 16)
        && hex(fields[3], 2)
}

/// Links `span` (a reconcile, a root of its own trace) to the trace of whoever created the CR.
pub fn link_to_creator(span: &tracing::Span, annotations: &std::collections::BTreeMap<String, String>) {
    if let Some(creator) = creator_context(annotations) {
        span.add_link(creator);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn traceparent_is_parsed_into_the_creators_context() {
        let a = annotations(&[(TRACEPARENT, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]);
        let sc = creator_context(&a).expect("valid traceparent");
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
    }

    #[test]
    fn absent_or_malformed_traceparent_gives_no_link() {
        assert!(creator_context(&annotations(&[])).is_none());
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(
                creator_context(&annotations(&[(TRACEPARENT, bad)])).is_none(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn export_needs_an_endpoint_and_is_switched_off_by_the_standard_variables() {
        let vars = |set: &'static [(&'static str, &'static str)]| {
            move |k: &str| set.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert!(!export_wanted(None, &vars(&[])));
        assert!(export_wanted(Some("http://j:4318"), &vars(&[])));
        assert!(export_wanted(
            None,
            &vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://j:4318")])
        ));
        assert!(export_wanted(
            None,
            &vars(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://j:4318/v1/traces")])
        ));
        assert!(!export_wanted(
            Some("http://j:4318"),
            &vars(&[("OTEL_SDK_DISABLED", "TRUE")])
        ));
        assert!(!export_wanted(
            Some("http://j:4318"),
            &vars(&[("OTEL_TRACES_EXPORTER", "none")])
        ));
    }
}
