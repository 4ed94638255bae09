import CMasq
import Logging
import Synchronization

/// libbpf's messages go to the daemon's logger (its callback is a C function, so the logger
/// is kept in a global the callback can reach).
private let libbpfLogger = Mutex<Logger?>(nil)

func setLibbpfLogger(_ logger: Logger) {
    var copy = logger
    copy[metadataKey: "service"] = "libbpf"
    libbpfLogger.withLock { $0 = copy }
    masq_set_libbpf_print { level, message in
        guard let message, let logger = libbpfLogger.withLock({ $0 }) else { return }
        let text = String(cString: message)
        logger.log(level: libbpfLogLevel(level, text), "\(text)")
    }
}

/// The level a libbpf message (libbpf's level: 0 warning, 1 info, 2 debug) is logged at.
/// `bpf_tc_hook_create` on a device that has its clsact qdisc already (the other direction's
/// hook made it, or another tool did: every tc-mode attach) makes libbpf warn with the kernel's
/// "Exclusivity flag on, cannot modify"; masq uses the existing qdisc, so that is no warning.
func libbpfLogLevel(_ level: Int32, _ text: String) -> Logger.Level {
    if text.contains("Exclusivity flag on, cannot modify") { return .debug }
    switch level {
    case 0: return .warning
    case 1: return .info
    default: return .debug
    }
}
