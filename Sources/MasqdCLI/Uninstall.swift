import ArgumentParser
import Daemon
import Datapath
import Foundation
import Logging

extension MasqdCommand {
    /// `masqd uninstall`: detach the programs from every device and remove the pinned state.
    public struct Uninstall: AsyncParsableCommand {
        public static let configuration = CommandConfiguration(
            abstract: "Detach masq's programs from every device and remove its pinned maps and links."
        )

        @Option(help: "The daemon's config file, read for bpffs-root.")
        var config: String?

        @Option(name: .customLong("bpffs-root"), help: "Where masq pinned its state (default /sys/fs/bpf/masq).")
        var bpffsRoot: String?

        @Flag(help: "Remove the pinned state even from another network namespace than the one masqd attached in (tc filters there stay).")
        var force = false

        public init() {}

        public func run() async throws {
            var root = DaemonConfig().bpffsRoot
            do {
                if let path = config, case .scalar(let value)? = try ConfigFile.load(path: path)[.bpffsRoot] {
                    root = value
                }
            } catch {
                FileHandle.standardErrorLine("masqd: config: \(error)")
                throw ExitCode(2)
            }
            root = bpffsRoot ?? root
            let logger = makeLogger(level: .info)
            do {
                try Datapath.uninstall(root: root, force: force, logger: logger)
            } catch {
                logger.error("Uninstall failed", metadata: ["error": "\(error)"])
                throw ExitCode(1)
            }
        }
    }
}
