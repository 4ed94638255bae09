@preconcurrency import Glibc
import Foundation

/// The standard `process_*` metrics (as the Prometheus client libraries name them), read from
/// /proc at scrape time: a handful of small reads.
struct ProcessMetrics {
    var startTimeSeconds: Double
    var cpuSeconds: Double
    var residentBytes: Double
    var virtualBytes: Double
    var openFDs: Double
    var maxFDs: Double

    /// This process's figures; nil when /proc cannot be read (then the family is left out).
    static func read() -> ProcessMetrics? {
        guard let stat = try? String(contentsOfFile: "/proc/self/stat", encoding: .utf8),
              let comm = stat.range(of: ") ", options: .backwards),
              let bootTime = bootTime() else { return nil }
        // Fields from the third (state) on; the command name before them may hold spaces.
        let fields = stat[comm.upperBound...].split(separator: " ")
        guard fields.count > 21, let utime = Double(fields[11]), let stime = Double(fields[12]),
              let start = Double(fields[19]), let vsize = Double(fields[20]), let rss = Double(fields[21]) else { return nil }
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? 0
        var limit = rlimit()
        getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
        return ProcessMetrics(startTimeSeconds: bootTime + start / ticks, cpuSeconds: (utime + stime) / ticks,
                              residentBytes: rss * Double(sysconf(Int32(_SC_PAGESIZE))), virtualBytes: vsize,
                              openFDs: Double(fds), maxFDs: Double(limit.rlim_cur))
    }

    /// `btime` of /proc/stat: when the system booted, in Unix seconds.
    private static func bootTime() -> Double? {
        guard let text = try? String(contentsOfFile: "/proc/stat", encoding: .utf8) else { return nil }
        return text.split(separator: "\n").first { $0.hasPrefix("btime ") }.flatMap { Double($0.dropFirst(6)) }
    }
}

extension PrometheusText {
    mutating func process(_ p: ProcessMetrics) {
        single("process_start_time_seconds", .gauge, help: "Start time of the process since unix epoch in seconds.", p.startTimeSeconds)
        single("process_cpu_seconds_total", .counter, help: "Total user and system CPU time spent in seconds.", p.cpuSeconds)
        single("process_resident_memory_bytes", .gauge, help: "Resident memory size in bytes.", p.residentBytes)
        single("process_virtual_memory_bytes", .gauge, help: "Virtual memory size in bytes.", p.virtualBytes)
        single("process_open_fds", .gauge, help: "Number of open file descriptors.", p.openFDs)
        single("process_max_fds", .gauge, help: "Maximum number of open file descriptors.", p.maxFDs)
    }
}
