import ArgumentParser
import MasqdCLI

// The command tree lives in MasqdCLI (tests drive it there); this target only starts it.
@main
extension MasqdCommand {}
