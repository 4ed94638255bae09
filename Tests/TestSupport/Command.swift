import Foundation

#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// A child started with posix_spawn: stdout and stderr go to files, stdin is /dev/null or a
/// pipe, every other descriptor is closed in the child. Reaped with waitpid(WNOHANG) on demand.
///
/// Why not a package's: Foundation's `Process.run()` in Swift 6.3.1 on Linux crashes now and
/// then (it over-reads a `dirent` while listing /proc/self/fd, swift-corelibs-foundation#5472),
/// which takes the whole test run down. swift-subprocess 1.0 confines a child to the async
/// closure that started it and has no synchronous wait, while the tests start masqd and probes
/// in one place and stop them from synchronous teardown (`defer`): a child here is a handle
/// that outlives the call that made it, and is reaped without the cooperative pool.
public final class ChildProcess: @unchecked Sendable {
    public let processIdentifier: pid_t
    private let lock = NSLock()
    private var waitStatus: Int32?

    /// `environment` is added to (and overrides) this process's environment.
    public init(executable: String, argv: [String], stdout: String, stderr: String, stdin: Int32?,
                environment: [String: String] = [:]) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let stdin {
            posix_spawn_file_actions_adddup2(&actions, stdin, 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
        posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        if let closeFrom = Self.addCloseFrom { _ = closeFrom(&actions, 3) }

        var cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { for arg in cArgs { free(arg) } }
        var env = ProcessInfo.processInfo.environment
        env.merge(environment) { $1 }
        var cEnv: [UnsafeMutablePointer<CChar>?] = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for entry in cEnv { free(entry) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, executable, &actions, nil, &cArgs, &cEnv)
        guard rc == 0 else {
            throw CommandError(description: "posix_spawn \(executable): \(String(cString: strerror(rc)))")
        }
        processIdentifier = pid
    }

    /// glibc 2.34+ has posix_spawn_file_actions_addclosefrom_np; Swift's Glibc module does not
    /// export it, so it is looked up at run time.
    private typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    private static let addCloseFrom: AddCloseFrom? = {
        dlsym(nil, "posix_spawn_file_actions_addclosefrom_np").map { unsafeBitCast($0, to: AddCloseFrom.self) }
    }()

    private func reap() -> Int32? {
        lock.lock()
        defer { lock.unlock() }
        if waitStatus == nil {
            var status: Int32 = 0
            if waitpid(processIdentifier, &status, WNOHANG) == processIdentifier { waitStatus = status }
        }
        return waitStatus
    }

    public var isRunning: Bool { reap() == nil }

    /// The exit code, or the signal number when a signal ended it (as Foundation reports it).
    public var terminationStatus: Int32 {
        guard let status = reap() else { return -1 }
        let signal = status & 0x7F
        return signal == 0 ? (status >> 8) & 0xFF : signal
    }
}

/// The outcome of one finished command.
public struct CommandResult: Sendable, CustomStringConvertible {
    public var argv: [String]
    public var status: Int32
    public var stdout: String
    public var stderr: String
    public var timedOut: Bool

    public var succeeded: Bool { status == 0 && !timedOut }

    public var description: String {
        let how = timedOut ? "timed out" : "exit \(status)"
        return "`\(argv.joined(separator: " "))`: \(how)\nstdout: \(stdout)\nstderr: \(stderr)"
    }
}

public struct CommandError: Error, CustomStringConvertible {
    public var description: String

    public init(description: String) {
        self.description = description
    }
}

/// Runs host commands as `ChildProcess`es. Output goes through files (never pipes that
/// could fill up), every wait is bounded, and nothing here blocks a Swift concurrency thread
/// for long: async waits poll.
public enum Command {
    /// Finds a tool on PATH or in the sbin directories (root's tools are there).
    public static func which(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let dirs = path.split(separator: ":").map(String.init)
            + ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/bin", "/bin"]
        for dir in dirs {
            let candidate = "\(dir)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    /// Starts argv[0] (looked up with `which`) with stdout and stderr in the given files.
    public static func launch(
        _ argv: [String], stdout: String, stderr: String, stdin: Pipe? = nil,
        environment: [String: String] = [:]
    ) throws -> ChildProcess {
        guard let tool = argv.first, let executable = which(tool) ?? (tool.hasPrefix("/") ? tool : nil)
        else { throw CommandError(description: "\(argv.first ?? "?"): not found on PATH") }
        return try ChildProcess(executable: executable, argv: argv, stdout: stdout, stderr: stderr,
                                stdin: stdin?.fileHandleForReading.fileDescriptor, environment: environment)
    }

    /// Runs a command to completion (killing it after `timeout`) and returns its output.
    public static func run(_ argv: [String], timeout: Duration = .seconds(30),
                           environment: [String: String] = [:]) async throws -> CommandResult {
        let (out, err) = scratchFiles()
        defer { removeScratch(out, err) }
        let process = try launch(argv, stdout: out, stderr: err, environment: environment)
        let exited = await waitForExit(process, timeout: timeout)
        if !exited { stop(process) }
        return CommandResult(
            argv: argv, status: exited ? process.terminationStatus : -1,
            stdout: read(out), stderr: read(err), timedOut: !exited)
    }

    /// The synchronous form, for teardown paths (short commands only).
    @discardableResult
    public static func runSync(_ argv: [String], timeout: Double = 15) -> CommandResult {
        let (out, err) = scratchFiles()
        defer { removeScratch(out, err) }
        guard let process = try? launch(argv, stdout: out, stderr: err) else {
            return CommandResult(argv: argv, status: -1, stdout: "", stderr: "could not start",
                                 timedOut: false)
        }
        let exited = waitForExitSync(process, timeout: timeout)
        if !exited { stop(process) }
        return CommandResult(
            argv: argv, status: exited ? process.terminationStatus : -1,
            stdout: read(out), stderr: read(err), timedOut: !exited)
    }

    /// Waits until the process exits; false when it is still running after `timeout`.
    public static func waitForExit(_ process: ChildProcess, timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning {
            if ContinuousClock.now >= deadline { return false }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return true
    }

    public static func waitForExitSync(_ process: ChildProcess, timeout: Double) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning {
            if Date() >= deadline { return false }
            usleep(20_000)
        }
        return true
    }

    /// SIGTERM, then SIGKILL if it is still there after two seconds.
    public static func stop(_ process: ChildProcess) {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGTERM)
        if !waitForExitSync(process, timeout: 2) {
            kill(process.processIdentifier, SIGKILL)
            _ = waitForExitSync(process, timeout: 2)
        }
    }

    public static func read(_ path: String) -> String {
        (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    }

    private static func scratchFiles() -> (String, String) {
        let base = NSTemporaryDirectory() + "masqe2e-cmd-\(getpid())-\(UUID().uuidString)"
        return (base + ".out", base + ".err")
    }

    private static func removeScratch(_ paths: String...) {
        for path in paths { try? FileManager.default.removeItem(atPath: path) }
    }
}
