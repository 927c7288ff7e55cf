"""Live mode: the host's clock (`clock`), the player that sends committed notes on their
beats (`scheduler`), and the session that hears the melody and commits each next bar
(`session`)."""
