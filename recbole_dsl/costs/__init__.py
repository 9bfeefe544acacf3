"""What a run costs: MACs counted under a dispatch mode (:mod:`.macs`), the bytes of the
compact model file (:mod:`.compact`), and the figures of a run's results (:mod:`.measure`)."""
