import Logging

/// The root logger: one per process, to stderr, at the configured level.
func makeLogger(level: Logger.Level) -> Logger {
    LoggingSystem.bootstrap { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = level
        return handler
    }
    var logger = Logger(label: "masqd")
    logger.logLevel = level
    return logger
}
