import Foundation
import PackagePlugin

/// Compiles the datapath (`bpf/bpf_masq.c` and its headers) with the toolchain's clang for the
/// bpf target and generates a Swift file that holds the object, so `masqd` embeds the exact
/// object it was built with and a plain `swift build` is enough.
@main
struct BPFObjectPlugin: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) async throws -> [Command] {
        let bpfDir = context.package.directoryURL.appending(path: "bpf")
        let clang = try context.tool(named: "clang").url
        let objcopy = clang.deletingLastPathComponent().appending(path: "llvm-objcopy")
        let work = context.pluginWorkDirectoryURL
        let output = work.appending(path: "EmbeddedBPFObject.swift")

        // Every file under bpf/ except tests is an input: a header change rebuilds the object.
        var inputs: [URL] = []
        if let walker = FileManager.default.enumerator(at: bpfDir, includingPropertiesForKeys: nil) {
            for case let url as URL in walker where ["c", "h", "sh"].contains(url.pathExtension) {
                inputs.append(url)
            }
        }

        return [
            .buildCommand(
                displayName: "Compiling the BPF datapath",
                executable: URL(fileURLWithPath: "/bin/sh"),
                arguments: [
                    bpfDir.appending(path: "build.sh").path,
                    clang.path,
                    objcopy.path,
                    bpfDir.path,
                    work.appending(path: "bpf_masq.o").path,
                    output.path,
                ],
                inputFiles: inputs,
                outputFiles: [output]
            )
        ]
    }
}
