"""Pure tensor loss functions (no state, no parameters), each with its formula and paper."""
