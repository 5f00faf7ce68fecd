//! The standard `process_*` metrics of this process, read from /proc at each scrape, and
//! the resident memory of any other process (an R host) by pid.

use procfs::process::{LimitValue, Process};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// `process_cpu_seconds_total`, memory, file descriptors, threads and start time, with the
/// names and meanings every Prometheus client library gives them.
#[derive(Debug)]
pub(crate) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // /proc may be unreadable (a sandbox); then the process metrics are absent, and the
        // rest of the scrape is unaffected.
        let Ok(me) = Process::myself() else { return Ok(()) };
        let Ok(stat) = me.stat() else { return Ok(()) };
        let ticks = procfs::ticks_per_second() as f64;
        let cpu = ConstCounter::new((stat.utime + stat.stime) as f64 / ticks);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu",
            "Total user and system CPU time spent by this process, in seconds",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?)?;
        let gauge = |encoder: &mut DescriptorEncoder, name: &str, help: &str, unit: Option<&Unit>, value: f64| {
            let metric = ConstGauge::new(value);
            metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
        };
        let page_size = procfs::page_size() as f64;
        gauge(
            &mut encoder,
            "process_resident_memory",
            "Resident memory size, in bytes",
            Some(&Unit::Bytes),
            stat.rss as f64 * page_size,
        )?;
        gauge(
            &mut encoder,
            "process_virtual_memory",
            "Virtual memory size, in bytes",
            Some(&Unit::Bytes),
            stat.vsize as f64,
        )?;
        gauge(&mut encoder, "process_threads", "Number of OS threads in this process", None, stat.num_threads as f64)?;
        if let Ok(boot) = procfs::boot_time_secs() {
            let start = boot as f64 + stat.starttime as f64 / ticks;
            gauge(
                &mut encoder,
                "process_start_time",
                "Start time of the process since the Unix epoch, in seconds",
                Some(&Unit::Seconds),
                start,
            )?;
        }
        if let Ok(open) = me.fd_count() {
            gauge(&mut encoder, "process_open_fds", "Number of open file descriptors", None, open as f64)?;
        }
        if let Ok(LimitValue::Value(max)) = me.limits().map(|limits| limits.max_open_files.soft_limit) {
            gauge(&mut encoder, "process_max_fds", "Maximum number of open file descriptors", None, max as f64)?;
        }
        Ok(())
    }
}

/// The resident memory of process `pid` in bytes, `None` once it is gone.
pub fn resident_memory_bytes(pid: u32) -> Option<u64> {
    let process = Process::new(i32::try_from(pid).ok()?).ok()?;
    Some(process.statm().ok()?.resident * procfs::page_size())
}
