//! KEDA's RabbitMQ scaler and the Kubernetes HPA controller, ported to Rust so that the
//! autoscaling tests (`autoscale.rs`) can read the queue metric exactly as KEDA reads it and
//! turn it into replicas exactly as KEDA and the HPA would, without a Kubernetes cluster.
//!
//! Sources ported (read at kedacore/keda 8b4f083, kubernetes/kubernetes
//! `pkg/controller/podautoscaler`):
//! - KEDA `pkg/scalers/rabbitmq_scaler.go`: `getVhostAndPathFromURL`, `getQueueInfoViaHTTP`
//!   (the management URL), `getJSON` + `getComposedQueue` (the JSON it takes),
//!   `getQueueStatus` (`messages` vs `messages_ready`), `GetMetricsAndActivity` (the metric
//!   and `isActive` against `activationValue`), `GetMetricSpecForScaling` (target `value`,
//!   `AverageValue` by default: `pkg/scalers/scaler.go` `GetMetricTargetType`).
//! - KEDA `pkg/scaling/executor/scale_scaledobjects.go`: `RequestScale`,
//!   `scaleFromZeroOrIdle`, `scaleToZeroOrIdle` (0 <-> 1 activation, `cooldownPeriod`);
//!   defaults from `pkg/scaling/executor/scale_executor.go` (cooldown 300 s, initial
//!   cooldown 0) and `apis/keda/v1alpha1` (`pollingInterval` 30 s, `GetHPAMinReplicas` =
//!   max(minReplicaCount, 1), `GetHPAMaxReplicas` default 100).
//! - Kubernetes `replica_calculator.go` `GetExternalPerPodMetricReplicas` (desired =
//!   ceil(metric / target) unless within the tolerance, 0.1 by default) and `horizontal.go`
//!   `reconcileAutoscaler`, `normalizeDesiredReplicas[WithBehaviors]`,
//!   `stabilizeRecommendation[WithBehaviors]`, `convertDesiredReplicasWithBehaviorRate`,
//!   `calculateScaleUpLimitWithScalingRules`, `calculateScaleDownLimitWithBehaviors`,
//!   `getReplicasChangePerPeriod`, `storeScaleEvent`; behavior defaults from
//!   `pkg/apis/autoscaling/v2/defaults.go`. The algorithm as documented:
//!   <https://kubernetes.io/docs/concepts/workloads/autoscaling/horizontal-pod-autoscale/#algorithm-details>.
//!
//! Time is passed in (seconds since any origin), so the logic runs the same under a test
//! clock and a real one. Only what rfleet's chart uses is ported: the `rabbitmq` trigger in
//! `protocol: http` (QueueLength and MessageRate modes), `External` metrics with
//! `AverageValue` targets, no fallback, no pause annotations, no idleReplicaCount.

use serde_json::Value;

/// Go's `net/url.QueryEscape`: everything but `A-Z a-z 0-9 - _ . ~` percent-encoded (upper
/// case hex), a space as `+`. KEDA escapes the queue name (and `vhostName`) with it, so
/// `rfleet.model.m@1` becomes `rfleet.model.m%401`.
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `getVhostAndPathFromURL`: the last path segment of `host` is the vhost (already
/// escaped, as written), the segments before it a path prefix; `vhostName` overrides the
/// vhost (escaped with QueryEscape); an empty vhost is the root, `/%2F`. (Go's `path.Join`
/// also cleans `.` and `..`; management URLs have none.)
pub fn vhost_and_path(raw_path: &str, vhost_name: &str) -> (String, String) {
    let parts: Vec<&str> = raw_path.split('/').collect();
    let mut vhost = format!("/{}", parts[parts.len() - 1]);
    let joined: Vec<&str> = parts[..parts.len() - 1].iter().copied().filter(|p| !p.is_empty()).collect();
    let path = if joined.is_empty() { String::new() } else { format!("/{}", joined.join("/")) };
    if !vhost_name.is_empty() {
        vhost = format!("/{}", query_escape(vhost_name));
    }
    if vhost.is_empty() || vhost == "/" {
        vhost = "/%2F".to_string();
    }
    (vhost, path)
}

/// A management URL split as Go's `url.Parse` would for the `http://user:pass@host:port/path`
/// form KEDA's `host` takes (no query or fragment).
pub struct HostUrl {
    pub scheme: String,
    /// `user:password` as written, if any.
    pub userinfo: Option<String>,
    pub authority: String,
    /// The path as written (Go's `RawPath`, or `Path` when they agree).
    pub raw_path: String,
}

impl HostUrl {
    pub fn parse(host: &str) -> HostUrl {
        let (scheme, rest) = host.split_once("://").unwrap_or_else(|| panic!("the trigger's host is not a URL"));
        let (authority, raw_path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (userinfo, authority) = match authority.rsplit_once('@') {
            Some((user, authority)) => (Some(user.to_string()), authority),
            None => (None, authority),
        };
        HostUrl {
            scheme: scheme.to_string(),
            userinfo,
            authority: authority.to_string(),
            raw_path: raw_path.to_string(),
        }
    }

    /// Basic auth credentials from the userinfo (Go's HTTP client sends them from the URL),
    /// percent-decoded.
    pub fn credentials(&self) -> Option<(String, String)> {
        let info = self.userinfo.as_deref()?;
        let (user, password) = info.split_once(':').unwrap_or((info, ""));
        Some((percent_decode(user), percent_decode(password)))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// KEDA's `QueueLength` or `MessageRate` mode (the others are not used by rfleet's chart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    QueueLength,
    MessageRate,
}

/// How several queues matched by `useRegex` are combined (`operation`, default `sum`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Sum,
    Avg,
    Max,
}

/// A `rabbitmq` trigger's metadata (`rabbitMQMetadata`), with `host` resolved from its
/// TriggerAuthentication.
#[derive(Debug, Clone)]
pub struct RabbitTrigger {
    pub queue_name: String,
    pub mode: Mode,
    pub value: f64,
    pub activation_value: f64,
    pub host: String,
    pub vhost_name: String,
    pub use_regex: bool,
    pub exclude_unacknowledged: bool,
    pub page_size: i64,
    pub operation: Operation,
}

impl RabbitTrigger {
    /// Parses a trigger's `metadata` (strings, as KEDA's CRD has them), as `parseRabbitMQMetadata`
    /// and `validateTrigger` do for the fields rfleet uses; `host` comes from the
    /// TriggerAuthentication's Secret. Panics, naming the field, on what KEDA would refuse.
    pub fn from_metadata(metadata: &Value, host: &str) -> RabbitTrigger {
        let field = |name: &str| metadata.get(name).and_then(Value::as_str);
        let number = |name: &str| {
            field(name)
                .map(|v| v.parse::<f64>().unwrap_or_else(|e| panic!("trigger {name} {v:?} is not a number: {e}")))
        };
        let flag = |name: &str| field(name).is_some_and(|v| v == "true");
        assert_eq!(field("protocol"), Some("http"), "the trigger must read the management API (protocol: http)");
        let mode = match field("mode") {
            Some("QueueLength") => Mode::QueueLength,
            Some("MessageRate") => Mode::MessageRate,
            other => panic!("trigger mode {other:?}: only QueueLength and MessageRate are ported"),
        };
        // validateTrigger: with a mode, `value` must be given and non-zero.
        let value = number("value").filter(|v| *v != 0.0).expect("trigger value must be specified");
        RabbitTrigger {
            queue_name: field("queueName").expect("trigger queueName").to_string(),
            mode,
            value,
            activation_value: number("activationValue").unwrap_or(0.0),
            host: host.to_string(),
            vhost_name: field("vhostName").unwrap_or_default().to_string(),
            use_regex: flag("useRegex"),
            exclude_unacknowledged: flag("excludeUnacknowledged"),
            page_size: number("pageSize").map_or(100, |v| v as i64),
            operation: match field("operation").unwrap_or("sum") {
                "sum" => Operation::Sum,
                "avg" => Operation::Avg,
                "max" => Operation::Max,
                other => panic!("trigger operation {other:?} must be one of sum, avg, max"),
            },
        }
    }

    /// `getQueueInfoViaHTTP`: the management API URL KEDA GETs, without the userinfo (given
    /// separately by [`HostUrl::credentials`], as Go's client sends it, so that it never
    /// shows in a message).
    pub fn management_url(&self) -> String {
        let host = HostUrl::parse(&self.host);
        let (vhost, path) = vhost_and_path(&host.raw_path, &self.vhost_name);
        let base = format!("{}://{}{}", host.scheme, host.authority, path);
        if self.use_regex {
            format!(
                "{base}/api/queues{vhost}?page=1&use_regex=true&pagination=false&name={}&page_size={}",
                query_escape(&self.queue_name),
                self.page_size
            )
        } else {
            format!("{base}/api/queues{vhost}/{}", query_escape(&self.queue_name))
        }
    }

    /// `getJSON` (+ `getComposedQueue` with `useRegex`): the fields KEDA decodes from the
    /// management API's answer.
    pub fn queue_info(&self, body: &Value) -> QueueInfo {
        if !self.use_regex {
            return QueueInfo::from_json(body);
        }
        assert!(
            body["page_count"].as_i64().unwrap_or(0) <= 1,
            "regex matches more queues than can be recovered at once"
        );
        let queues: Vec<QueueInfo> =
            body["items"].as_array().map(|items| items.iter().map(QueueInfo::from_json).collect()).unwrap_or_default();
        let mut composed = QueueInfo::default();
        if queues.is_empty() {
            return composed;
        }
        let n = queues.len() as i64;
        for q in &queues {
            match self.operation {
                Operation::Sum | Operation::Avg => {
                    composed.messages += q.messages;
                    composed.messages_ready += q.messages_ready;
                    composed.publish_rate += q.publish_rate;
                    composed.deliver_get_rate += q.deliver_get_rate;
                }
                Operation::Max => {
                    composed.messages = composed.messages.max(q.messages);
                    composed.messages_ready = composed.messages_ready.max(q.messages_ready);
                    composed.publish_rate = composed.publish_rate.max(q.publish_rate);
                    composed.deliver_get_rate = composed.deliver_get_rate.max(q.deliver_get_rate);
                }
            }
        }
        if self.operation == Operation::Avg {
            // getAverage: Go integer division for the counts.
            composed.messages /= n;
            composed.messages_ready /= n;
            composed.publish_rate /= n as f64;
            composed.deliver_get_rate /= n as f64;
        }
        // getComposedQueue sets MessagesUnacknowledged to 0.
        composed.messages_unacknowledged = 0;
        composed
    }

    /// `getQueueStatus` + `GetMetricsAndActivity`: the metric value KEDA hands the HPA and
    /// whether the trigger is active (`> activationValue`, strictly).
    pub fn metric_and_activity(&self, info: &QueueInfo) -> (f64, bool) {
        // getQueueStatus: `messages` (ready + unacknowledged) unless excludeUnacknowledged.
        let messages = if self.exclude_unacknowledged { info.messages_ready } else { info.messages } as f64;
        match self.mode {
            Mode::QueueLength => (messages, messages > self.activation_value),
            Mode::MessageRate => {
                (info.publish_rate, info.publish_rate > self.activation_value || messages > self.activation_value)
            }
        }
    }

    /// The metric as the HPA sees it: KEDA reports it in milli-units
    /// (`GenerateMetricInMili`) against a milli target (`GetMetricTargetMili`).
    pub fn metric_spec(&self, metric: f64) -> ExternalMetric {
        ExternalMetric {
            usage_milli: (metric * 1000.0).round() as i64,
            target_milli: (self.value * 1000.0).round() as i64,
        }
    }
}

/// The `queueInfo` fields KEDA decodes (Go zero values for missing fields).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueInfo {
    pub messages: i64,
    pub messages_ready: i64,
    pub messages_unacknowledged: i64,
    /// `message_stats.publish_details.rate`
    pub publish_rate: f64,
    /// `message_stats.deliver_get_details.rate`
    pub deliver_get_rate: f64,
}

impl QueueInfo {
    pub fn from_json(v: &Value) -> QueueInfo {
        QueueInfo {
            messages: v["messages"].as_i64().unwrap_or(0),
            messages_ready: v["messages_ready"].as_i64().unwrap_or(0),
            messages_unacknowledged: v["messages_unacknowledged"].as_i64().unwrap_or(0),
            publish_rate: v["message_stats"]["publish_details"]["rate"].as_f64().unwrap_or(0.0),
            deliver_get_rate: v["message_stats"]["deliver_get_details"]["rate"].as_f64().unwrap_or(0.0),
        }
    }
}

/// One External metric with an AverageValue target, in milli-units.
#[derive(Debug, Clone, Copy)]
pub struct ExternalMetric {
    pub usage_milli: i64,
    pub target_milli: i64,
}

/// `GetExternalPerPodMetricReplicas`: ceil(usage / target) unless usage / (target * replicas)
/// is within the tolerance of 1 (then the replicas stay). Tolerances per direction
/// (`behavior.scale{Up,Down}.tolerance`, Kubernetes 1.33+), 0.1 each by default
/// (`--horizontal-pod-autoscaler-tolerance`).
pub fn external_per_pod_replicas(status_replicas: i32, metric: ExternalMetric, tolerance: Tolerance) -> i32 {
    let ratio = metric.usage_milli as f64 / (metric.target_milli as f64 * f64::from(status_replicas));
    if ratio >= 1.0 - tolerance.down && ratio <= 1.0 + tolerance.up {
        status_replicas
    } else {
        (metric.usage_milli as f64 / metric.target_milli as f64).ceil() as i32
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    pub up: f64,
    pub down: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyType {
    Pods,
    Percent,
}

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub kind: PolicyType,
    pub value: i32,
    pub period_seconds: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectPolicy {
    Max,
    Min,
    Disabled,
}

/// `HPAScalingRules`, defaults filled in as `GenerateHPAScale{Up,Down}Rules` do.
#[derive(Debug, Clone)]
pub struct ScalingRules {
    pub stabilization_window_seconds: i32,
    pub select_policy: SelectPolicy,
    pub policies: Vec<Policy>,
    pub tolerance: f64,
}

impl ScalingRules {
    /// Defaults: scale up 0 s window, max of (4 pods, 100 %) per 15 s; scale down 300 s
    /// window, 100 % per 15 s.
    fn parse(rules: Option<&Value>, up: bool) -> ScalingRules {
        let default_policies = if up {
            vec![
                Policy { kind: PolicyType::Pods, value: 4, period_seconds: 15 },
                Policy { kind: PolicyType::Percent, value: 100, period_seconds: 15 },
            ]
        } else {
            vec![Policy { kind: PolicyType::Percent, value: 100, period_seconds: 15 }]
        };
        let rules = rules.cloned().unwrap_or(Value::Null);
        let policies: Vec<Policy> = rules["policies"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| Policy {
                        kind: match p["type"].as_str() {
                            Some("Pods") => PolicyType::Pods,
                            Some("Percent") => PolicyType::Percent,
                            other => panic!("HPA policy type {other:?}"),
                        },
                        value: p["value"].as_i64().expect("policy value") as i32,
                        period_seconds: p["periodSeconds"].as_i64().expect("policy periodSeconds") as i32,
                    })
                    .collect()
            })
            .unwrap_or_default();
        ScalingRules {
            stabilization_window_seconds: rules["stabilizationWindowSeconds"]
                .as_i64()
                .map_or(if up { 0 } else { 300 }, |v| v as i32),
            select_policy: match rules["selectPolicy"].as_str() {
                None | Some("Max") => SelectPolicy::Max,
                Some("Min") => SelectPolicy::Min,
                Some("Disabled") => SelectPolicy::Disabled,
                Some(other) => panic!("HPA selectPolicy {other:?}"),
            },
            policies: if policies.is_empty() { default_policies } else { policies },
            tolerance: rules["tolerance"].as_f64().unwrap_or(0.1),
        }
    }
}

/// `HorizontalPodAutoscalerBehavior`.
#[derive(Debug, Clone)]
pub struct Behavior {
    pub scale_up: ScalingRules,
    pub scale_down: ScalingRules,
}

impl Behavior {
    pub fn parse(behavior: &Value) -> Behavior {
        Behavior {
            scale_up: ScalingRules::parse(behavior.get("scaleUp"), true),
            scale_down: ScalingRules::parse(behavior.get("scaleDown"), false),
        }
    }
}

/// The HPA KEDA creates for a ScaledObject, and the controller's memory of it
/// (recommendations and scale events, kept per HPA in `horizontal.go`).
pub struct Hpa {
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub behavior: Option<Behavior>,
    /// `--horizontal-pod-autoscaler-downscale-stabilization` (5 min), used without behavior.
    pub downscale_stabilisation_window: f64,
    recommendations: Vec<(f64, i32)>,
    scale_up_events: Vec<(f64, i32)>,
    scale_down_events: Vec<(f64, i32)>,
}

/// `getReplicasChangePerPeriod`: the replicas changed by events within the last `period`.
fn change_per_period(now: f64, period_seconds: i32, events: &[(f64, i32)]) -> i32 {
    let cutoff = now - f64::from(period_seconds);
    events.iter().filter(|(at, _)| *at > cutoff).map(|(_, change)| change).sum()
}

impl Hpa {
    pub fn new(min_replicas: i32, max_replicas: i32, behavior: Option<Behavior>) -> Hpa {
        Hpa {
            min_replicas,
            max_replicas,
            behavior,
            downscale_stabilisation_window: 300.0,
            recommendations: Vec::new(),
            scale_up_events: Vec::new(),
            scale_down_events: Vec::new(),
        }
    }

    fn tolerance(&self) -> Tolerance {
        match &self.behavior {
            Some(b) => Tolerance { up: b.scale_up.tolerance, down: b.scale_down.tolerance },
            None => Tolerance { up: 0.1, down: 0.1 },
        }
    }

    /// One `reconcileAutoscaler` pass at time `now`: `spec_replicas` the target's
    /// `spec.replicas`, `status_replicas` its pods, `metrics` one per trigger. Returns the
    /// replicas to set.
    pub fn reconcile(&mut self, now: f64, spec_replicas: i32, status_replicas: i32, metrics: &[ExternalMetric]) -> i32 {
        let desired = if spec_replicas == 0 && self.min_replicas != 0 {
            // Autoscaling is disabled for this resource (KEDA owns 0 <-> 1).
            0
        } else if spec_replicas > self.max_replicas {
            self.max_replicas
        } else if spec_replicas < self.min_replicas {
            self.min_replicas
        } else {
            // computeReplicasForMetrics: the largest proposal over the metrics.
            let tolerance = self.tolerance();
            let proposal = metrics
                .iter()
                .map(|m| external_per_pod_replicas(status_replicas, *m, tolerance))
                .max()
                .unwrap_or(spec_replicas);
            if self.behavior.is_some() {
                self.normalize_with_behaviors(now, spec_replicas, proposal)
            } else {
                self.normalize(now, spec_replicas, proposal)
            }
        };
        if desired != spec_replicas {
            self.store_scale_event(now, spec_replicas, desired);
        }
        desired
    }

    /// `normalizeDesiredReplicas`: without behavior, the highest recommendation of the last
    /// 5 minutes, then at most max(2 * current, 4) and within min..max.
    fn normalize(&mut self, now: f64, current: i32, proposal: i32) -> i32 {
        let cutoff = now - self.downscale_stabilisation_window;
        let stabilized =
            self.recommendations.iter().filter(|(at, _)| *at >= cutoff).map(|(_, r)| *r).fold(proposal, i32::max);
        self.record(now, proposal, cutoff, cutoff);
        let scale_up_limit = (2.0 * f64::from(current)).max(4.0) as i32;
        let maximum = self.max_replicas.min(scale_up_limit);
        stabilized.clamp(self.min_replicas, maximum.max(self.min_replicas))
    }

    /// Records an unstabilized recommendation, reusing a sample older than both windows.
    fn record(&mut self, now: f64, recommendation: i32, up_cutoff: f64, down_cutoff: f64) {
        match self.recommendations.iter_mut().find(|(at, _)| *at < up_cutoff && *at < down_cutoff) {
            Some(old) => *old = (now, recommendation),
            None => self.recommendations.push((now, recommendation)),
        }
    }

    /// `normalizeDesiredReplicasWithBehaviors`: stabilization, then the rate policies.
    fn normalize_with_behaviors(&mut self, now: f64, current: i32, proposal: i32) -> i32 {
        let behavior = self.behavior.clone().expect("behavior");
        // stabilizeRecommendationWithBehaviors: the lowest recommendation within the scale-up
        // window bounds scale up; the highest within the scale-down window bounds scale down.
        let up_cutoff = now - f64::from(behavior.scale_up.stabilization_window_seconds);
        let down_cutoff = now - f64::from(behavior.scale_down.stabilization_window_seconds);
        let (mut up, mut down) = (proposal, proposal);
        for (at, rec) in &self.recommendations {
            if *at > up_cutoff {
                up = up.min(*rec);
            }
            if *at > down_cutoff {
                down = down.max(*rec);
            }
        }
        let mut stabilized = current;
        if stabilized < up {
            stabilized = up;
        }
        if stabilized > down {
            stabilized = down;
        }
        self.record(now, proposal, up_cutoff, down_cutoff);
        // convertDesiredReplicasWithBehaviorRate.
        if stabilized > current {
            let limit = self.policy_limit(now, current, &behavior.scale_up, true).max(current);
            stabilized.min(self.max_replicas.min(limit))
        } else if stabilized < current {
            let limit = self.policy_limit(now, current, &behavior.scale_down, false).min(current);
            stabilized.max(self.min_replicas.max(limit))
        } else {
            stabilized
        }
    }

    /// `calculateScaleUpLimitWithScalingRules` (`up`) and
    /// `calculateScaleDownLimitWithBehaviors`: the furthest the policies let the replicas
    /// go from where each policy's period started. `selectPolicy: Max` takes the policy
    /// allowing the largest change (the highest count up, the lowest down), `Min` the
    /// smallest, `Disabled` none.
    fn policy_limit(&self, now: f64, current: i32, rules: &ScalingRules, up: bool) -> i32 {
        let highest = match rules.select_policy {
            SelectPolicy::Disabled => return current,
            SelectPolicy::Max => up,
            SelectPolicy::Min => !up,
        };
        let proposals = rules.policies.iter().map(|policy| {
            let added = change_per_period(now, policy.period_seconds, &self.scale_up_events);
            let deleted = change_per_period(now, policy.period_seconds, &self.scale_down_events);
            let start = current - added + deleted;
            let percent = f64::from(policy.value) / 100.0;
            match (policy.kind, up) {
                (PolicyType::Pods, true) => start + policy.value,
                (PolicyType::Pods, false) => start - policy.value,
                // Rounded up, so that a small percentage still adds a replica.
                (PolicyType::Percent, true) => (f64::from(start) * (1.0 + percent)).ceil() as i32,
                // Go's int32(float64) conversion truncates.
                (PolicyType::Percent, false) => (f64::from(start) * (1.0 - percent)) as i32,
            }
        });
        let limit = if highest { proposals.max() } else { proposals.min() };
        limit.unwrap_or(current)
    }

    /// `storeScaleEvent` (kept only with a behavior; events older than the longest policy
    /// period are dropped, as `markScaleEventsOutdated` lets them be reused).
    fn store_scale_event(&mut self, now: f64, previous: i32, new: i32) {
        let Some(behavior) = &self.behavior else { return };
        let (events, rules, change) = if new > previous {
            (&mut self.scale_up_events, &behavior.scale_up, new - previous)
        } else {
            (&mut self.scale_down_events, &behavior.scale_down, previous - new)
        };
        let longest = rules.policies.iter().map(|p| p.period_seconds).max().unwrap_or(0);
        events.retain(|(at, _)| *at >= now - f64::from(longest));
        events.push((now, change));
    }
}

/// The parameters of one rendered ScaledObject that scaling depends on.
#[derive(Debug, Clone)]
pub struct ScaledObjectSpec {
    pub name: String,
    pub target: String,
    pub polling_interval: f64,
    pub cooldown_period: f64,
    pub initial_cooldown_period: f64,
    pub min_replica_count: i32,
    pub max_replica_count: i32,
    pub behavior: Option<Behavior>,
    /// The `rabbitmq` triggers' metadata.
    pub triggers: Vec<Value>,
}

impl ScaledObjectSpec {
    /// Reads a rendered `keda.sh/v1alpha1` ScaledObject, KEDA's defaults for what it leaves out.
    pub fn parse(object: &Value) -> ScaledObjectSpec {
        assert_eq!(object["kind"], "ScaledObject", "not a ScaledObject: {}", object["kind"]);
        let spec = &object["spec"];
        let seconds = |name: &str, default: f64| spec[name].as_f64().unwrap_or(default);
        let triggers: Vec<Value> = spec["triggers"]
            .as_array()
            .expect("ScaledObject spec.triggers")
            .iter()
            .inspect(|t| assert_eq!(t["type"], "rabbitmq", "a trigger of another type: {t}"))
            .map(|t| t["metadata"].clone())
            .collect();
        assert!(!triggers.is_empty(), "the ScaledObject has no trigger");
        ScaledObjectSpec {
            name: object["metadata"]["name"].as_str().unwrap_or_default().to_string(),
            target: spec["scaleTargetRef"]["name"].as_str().expect("scaleTargetRef.name").to_string(),
            polling_interval: seconds("pollingInterval", 30.0),
            cooldown_period: seconds("cooldownPeriod", 300.0),
            initial_cooldown_period: seconds("initialCooldownPeriod", 0.0),
            min_replica_count: spec["minReplicaCount"].as_i64().unwrap_or(0) as i32,
            max_replica_count: spec["maxReplicaCount"].as_i64().unwrap_or(100) as i32,
            behavior: spec["advanced"]["horizontalPodAutoscalerConfig"].get("behavior").map(Behavior::parse),
            triggers,
        }
    }
}

/// KEDA's scale loop for one ScaledObject (`RequestScale` every `pollingInterval`) and the
/// HPA it owns.
pub struct Autoscaler {
    pub spec: ScaledObjectSpec,
    pub hpa: Hpa,
    created: f64,
    last_active: Option<f64>,
    /// KEDA polls on a ticker of `pollingInterval` from the ScaledObject's start.
    next_poll: f64,
}

impl Autoscaler {
    pub fn new(spec: ScaledObjectSpec, now: f64) -> Autoscaler {
        // GetHPAMinReplicas: the HPA never goes below 1; KEDA itself does 1 -> 0.
        let hpa = Hpa::new(spec.min_replica_count.max(1), spec.max_replica_count, spec.behavior.clone());
        Autoscaler { spec, hpa, created: now, last_active: None, next_poll: now }
    }

    /// KEDA's `RequestScale`, if a polling interval has passed since the last one: returns
    /// the replicas KEDA sets (or `replicas` unchanged).
    pub fn keda_poll(&mut self, now: f64, replicas: i32, active: bool) -> i32 {
        if now < self.next_poll {
            return replicas;
        }
        while self.next_poll <= now {
            self.next_poll += self.spec.polling_interval;
        }
        let min = self.spec.min_replica_count;
        if active {
            self.last_active = Some(now);
            if replicas == 0 {
                // scaleFromZeroOrIdle: to minReplicaCount if above 0, else 1.
                return if min > 0 { min } else { 1 };
            }
            replicas
        } else if replicas > 0 && min == 0 {
            // scaleToZeroOrIdle: once cooldownPeriod has passed since the trigger was last
            // active (or initialCooldownPeriod since creation, if it never was).
            let cooled = match self.last_active {
                None => self.created + self.spec.initial_cooldown_period < now,
                Some(at) => at + self.spec.cooldown_period < now,
            };
            if cooled {
                0
            } else {
                replicas
            }
        } else if replicas < min {
            min
        } else {
            replicas
        }
    }

    /// One step: KEDA's poll (on its interval), then an HPA sync. `metrics` are the
    /// triggers' (metric value, isActive) in trigger order; `pods` the target's pods.
    pub fn step(&mut self, now: f64, replicas: i32, pods: i32, metrics: &[(ExternalMetric, bool)]) -> i32 {
        let active = metrics.iter().any(|(_, a)| *a);
        let replicas = self.keda_poll(now, replicas, active);
        let values: Vec<ExternalMetric> = metrics.iter().map(|(m, _)| *m).collect();
        self.hpa.reconcile(now, replicas, pods, &values)
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use serde_json::json;

    #[test]
    fn keda_vhost_and_path_cases() {
        // The cases of KEDA's Test_getVhostAndPathFromURL (rabbitmq_scaler_test.go).
        let cases = [
            ("myVhost", "", "/myVhost", ""),
            ("%2FmyVhost", "", "/%2FmyVhost", ""),
            ("/", "", "/%2F", ""),
            ("//", "", "/%2F", ""),
            ("/%2F", "", "/%2F", ""),
            ("", "", "/%2F", ""),
            ("sub1/myVhost", "", "/myVhost", "/sub1"),
            ("sub1/", "overridenVhost", "/overridenVhost", "/sub1"),
            ("myVhost", "overridenVhost", "/overridenVhost", ""),
            ("sub1/%2FmyVhost", "", "/%2FmyVhost", "/sub1"),
            ("sub1/", "", "/%2F", "/sub1"),
            ("sub1/", "myVhost", "/myVhost", "/sub1"),
            ("sub1//", "", "/%2F", "/sub1"),
            ("sub1/%2F", "", "/%2F", "/sub1"),
            ("sub1/sub2/myVhost", "", "/myVhost", "/sub1/sub2"),
            ("sub1/sub2/myVhost", "overridenVhost", "/overridenVhost", "/sub1/sub2"),
            ("sub1/sub2/%2FmyVhost", "", "/%2FmyVhost", "/sub1/sub2"),
            ("sub1/sub2/", "", "/%2F", "/sub1/sub2"),
            ("sub1/sub2/", "myVhost", "/myVhost", "/sub1/sub2"),
            ("sub1/sub2//", "", "/%2F", "/sub1/sub2"),
            ("sub1/sub2/%2F", "", "/%2F", "/sub1/sub2"),
        ];
        for (raw, vhost_name, vhost, path) in cases {
            assert_eq!(
                vhost_and_path(raw, vhost_name),
                (vhost.to_string(), path.to_string()),
                "{raw:?} {vhost_name:?}"
            );
        }
    }

    fn trigger(extra: Value, host: &str) -> RabbitTrigger {
        let mut metadata =
            json!({"protocol": "http", "mode": "QueueLength", "value": "4", "queueName": "rfleet.model.m@1"});
        for (k, v) in extra.as_object().unwrap() {
            metadata[k] = v.clone();
        }
        RabbitTrigger::from_metadata(&metadata, host)
    }

    #[test]
    fn keda_management_urls() {
        let t = trigger(json!({}), "http://guest:guest@rabbit:15672/%2f");
        assert_eq!(t.management_url(), "http://rabbit:15672/api/queues/%2f/rfleet.model.m%401");
        assert_eq!(HostUrl::parse(&t.host).credentials(), Some(("guest".into(), "guest".into())));
        let t = trigger(json!({"vhostName": "/"}), "http://u:p%40ss@rabbit:15672/");
        assert_eq!(t.management_url(), "http://rabbit:15672/api/queues/%2F/rfleet.model.m%401");
        assert_eq!(HostUrl::parse(&t.host).credentials(), Some(("u".into(), "p@ss".into())));
        // The URL of KEDA's TestGetQueueInfo with a regex (rabbitmq_scaler_test.go).
        let t = RabbitTrigger::from_metadata(
            &json!({"protocol": "http", "mode": "QueueLength", "value": "1", "queueName": "^evaluate_trials$", "useRegex": "true"}),
            "http://rabbit:15672/sub/%2F",
        );
        assert_eq!(
            t.management_url(),
            "http://rabbit:15672/sub/api/queues/%2F?page=1&use_regex=true&pagination=false&name=%5Eevaluate_trials%24&page_size=100"
        );
    }

    #[test]
    fn keda_metric_counts_unacknowledged_unless_excluded() {
        let body = json!({"messages": 7, "messages_ready": 3, "messages_unacknowledged": 4,
                          "message_stats": {"publish_details": {"rate": 2.5}, "deliver_get_details": {"rate": 1.5}}});
        let t = trigger(json!({"activationValue": "6"}), "http://h:15672/");
        let info = t.queue_info(&body);
        assert_eq!(t.metric_and_activity(&info), (7.0, true));
        let t = trigger(json!({"activationValue": "6", "excludeUnacknowledged": "true"}), "http://h:15672/");
        assert_eq!(t.metric_and_activity(&info), (3.0, false));
        // activationValue is strict: 7 messages with activationValue 7 is not active.
        let t = trigger(json!({"activationValue": "7"}), "http://h:15672/");
        assert_eq!(t.metric_and_activity(&info), (7.0, false));
        let t = trigger(json!({"mode": "MessageRate", "activationValue": "2"}), "http://h:15672/");
        assert_eq!(t.metric_and_activity(&info), (2.5, true));
        // An idle queue the stats have not seen traffic on: no message_stats at all.
        assert_eq!(t.queue_info(&json!({"messages": 0})), QueueInfo::default());
        // Regex: summed, unacknowledged zeroed (getComposedQueue).
        let t = trigger(json!({"useRegex": "true"}), "http://h:15672/");
        let info = t.queue_info(&json!({"page_count": 1, "items": [body.clone(), body]}));
        assert_eq!((info.messages, info.messages_ready, info.messages_unacknowledged), (14, 6, 0));
    }

    #[test]
    fn hpa_average_value_and_tolerance() {
        let t = Tolerance { up: 0.1, down: 0.1 };
        let m = |usage: f64, target: f64| ExternalMetric {
            usage_milli: (usage * 1000.0) as i64,
            target_milli: (target * 1000.0) as i64,
        };
        assert_eq!(external_per_pod_replicas(1, m(9.0, 2.0), t), 5);
        assert_eq!(external_per_pod_replicas(4, m(8.5, 2.0), t), 4, "within 10 %: no change");
        assert_eq!(external_per_pod_replicas(4, m(9.0, 2.0), t), 5, "12.5 % over: ceil(9/2)");
        assert_eq!(external_per_pod_replicas(3, m(0.0, 2.0), t), 0);
    }

    fn spec(min: i32, behavior: Value) -> ScaledObjectSpec {
        ScaledObjectSpec::parse(&json!({
            "kind": "ScaledObject", "metadata": {"name": "so"},
            "spec": {"scaleTargetRef": {"name": "w"}, "pollingInterval": 5, "cooldownPeriod": 30,
                     "minReplicaCount": min, "maxReplicaCount": 6,
                     "advanced": {"horizontalPodAutoscalerConfig": {"behavior": behavior}},
                     "triggers": [{"type": "rabbitmq", "metadata": {"protocol": "http", "mode": "QueueLength",
                                   "value": "2", "activationValue": "3", "queueName": "q"}}]}
        }))
    }

    /// The metric of `messages` on the one trigger of `spec`.
    fn observe(spec: &ScaledObjectSpec, messages: i64) -> Vec<(ExternalMetric, bool)> {
        let t = RabbitTrigger::from_metadata(&spec.triggers[0], "http://h:15672/");
        let (metric, active) = t.metric_and_activity(&QueueInfo { messages, ..QueueInfo::default() });
        vec![(t.metric_spec(metric), active)]
    }

    #[test]
    fn keda_scale_to_zero_with_activation_and_cooldown() {
        let spec = spec(0, json!({"scaleDown": {"stabilizationWindowSeconds": 0}}));
        let mut a = Autoscaler::new(spec.clone(), 0.0);
        let mut replicas = 0;
        // KEDA polls every 5 s from its start (t = 0): at 0, 5, 10, ...
        // At zero, 3 messages is not above activationValue 3: the HPA is disabled, KEDA waits.
        for t in 0..=10 {
            replicas = a.step(f64::from(t), replicas, replicas, &observe(&spec, 3));
            assert_eq!(replicas, 0, "activated at t={t} by 3 messages");
        }
        // 9 messages: nothing until KEDA's next poll (t = 15).
        replicas = a.step(11.0, replicas, 0, &observe(&spec, 9));
        assert_eq!(replicas, 0, "the HPA acted at zero replicas");
        // Then KEDA activates (0 -> 1) and the HPA proposes ceil(9 / 2) = 5 (no pod yet: an
        // infinite usage ratio), within the default scale-up policies: max(1 + 4 pods,
        // 1 * 200 %) per 15 s = 5.
        replicas = a.step(15.0, replicas, 0, &observe(&spec, 9));
        assert_eq!(replicas, 5);
        // Idle: the HPA goes down to its minimum, 1 (stabilization 0, 100 % per 15 s).
        replicas = a.step(16.0, replicas, replicas, &observe(&spec, 0));
        assert_eq!(replicas, 1);
        // KEDA takes 1 -> 0 only once cooldownPeriod (30 s) has passed since the trigger was
        // last active (its poll at t = 15), on a poll: not at 45 (not yet past), at 50.
        for t in 17..=49 {
            replicas = a.step(f64::from(t), replicas, replicas, &observe(&spec, 0));
            assert_eq!(replicas, 1, "scaled to zero at t={t}, within the cooldown");
        }
        replicas = a.step(50.0, replicas, replicas, &observe(&spec, 0));
        assert_eq!(replicas, 0, "not scaled to zero after the cooldown");
        // At zero the HPA is disabled: a metric it would act on (3 messages, ceil(3/2) = 2)
        // changes nothing on KEDA's next poll, because it is not above activationValue.
        replicas = a.step(55.0, replicas, replicas, &observe(&spec, 3));
        assert_eq!(replicas, 0);
    }

    #[test]
    fn hpa_behavior_stabilization_and_policies() {
        let behavior = json!({
            "scaleUp": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 10}]},
            "scaleDown": {"stabilizationWindowSeconds": 20, "policies": [{"type": "Percent", "value": 50, "periodSeconds": 10}]}
        });
        let spec = spec(1, behavior);
        let mut a = Autoscaler::new(spec.clone(), 0.0);
        // 12 messages, value 2: 6 wanted, but one pod per 10 s.
        let mut replicas = a.step(0.0, 1, 1, &observe(&spec, 12));
        assert_eq!(replicas, 2);
        replicas = a.step(5.0, replicas, replicas, &observe(&spec, 12));
        assert_eq!(replicas, 2, "a second pod within the 10 s period");
        replicas = a.step(10.5, replicas, replicas, &observe(&spec, 12));
        assert_eq!(replicas, 3);
        // Load gone: the scale-down window keeps the highest recommendation of the last 20 s
        // (6), so nothing happens until the 6 of t = 10.5 leaves it; then 50 % per 10 s.
        for t in [11.0, 20.0, 30.0] {
            replicas = a.step(t, replicas, replicas, &observe(&spec, 0));
            assert_eq!(replicas, 3, "scaled down at t={t}, within the stabilization window");
        }
        replicas = a.step(31.0, replicas, replicas, &observe(&spec, 0));
        assert_eq!(replicas, 1, "50 % of 3 truncates to 1");
        // selectPolicy Min: the policy allowing the smallest change, up (+4 pods or 100 %
        // from 1: 2) and down (-1 pod or 50 % from 6: 5).
        let rules =
            |policies: Value| json!({"selectPolicy": "Min", "stabilizationWindowSeconds": 0, "policies": policies});
        let behavior = Behavior::parse(&json!({
            "scaleUp": rules(json!([{"type": "Pods", "value": 4, "periodSeconds": 15}, {"type": "Percent", "value": 100, "periodSeconds": 15}])),
            "scaleDown": rules(json!([{"type": "Pods", "value": 1, "periodSeconds": 15}, {"type": "Percent", "value": 50, "periodSeconds": 15}])),
        }));
        let busy = ExternalMetric { usage_milli: 40_000, target_milli: 1000 };
        assert_eq!(Hpa::new(1, 10, Some(behavior.clone())).reconcile(0.0, 1, 1, &[busy]), 2);
        let quiet = ExternalMetric { usage_milli: 0, target_milli: 1000 };
        assert_eq!(Hpa::new(1, 10, Some(behavior)).reconcile(0.0, 6, 6, &[quiet]), 5);
        // Without a behavior: the legacy 5 minute window and max(2 * current, 4).
        let mut hpa = Hpa::new(1, 10, None);
        let m = ExternalMetric { usage_milli: 40_000, target_milli: 2000 };
        assert_eq!(hpa.reconcile(0.0, 1, 1, &[m]), 4);
        let idle = ExternalMetric { usage_milli: 0, target_milli: 2000 };
        // Within the 5 minute window the highest recommendation (20, before the rate limit)
        // stands: idle, the HPA still goes up to 2 * 4.
        assert_eq!(hpa.reconcile(100.0, 4, 4, &[idle]), 8);
        assert_eq!(hpa.reconcile(301.0, 8, 8, &[idle]), 1);
    }
}
