"""The stream state every token mixer keeps (``TitansLM.stream``)."""


class StreamState:
    """``stream_state`` is None for whole sequences; ``TitansLM.stream`` sets it to a dict the mixer
    keeps between the pieces of one stream and resets it to None after each piece."""

    stream_state = None

    def stream_slot(self, name):
        """This mixer's stream state for one branch, or None outside a stream."""
        return None if self.stream_state is None else self.stream_state.setdefault(name, {})
