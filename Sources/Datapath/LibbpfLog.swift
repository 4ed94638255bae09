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
        switch level {
        case 0: logger.warning("\(text)")
        case 1: logger.info("\(text)")
        default: logger.debug("\(text)")
        }
    }
}
