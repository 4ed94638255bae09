import Daemon

await MasqdCommand.main()
