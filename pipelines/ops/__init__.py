"""Operations: server launchers, Prefect set-up and deployment, GPU slots, scale-out, process control."""
