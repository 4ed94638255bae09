import ArgumentParser
import Daemon

// The command tree lives in Daemon (tests drive it there); this target only starts it.
@main
extension MasqdCommand {}
