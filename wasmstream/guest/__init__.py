"""The guest contracts: the core ABI, the component contract, how an instance runs a frame."""
