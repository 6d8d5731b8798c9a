// Specs to start from on the submit page. The seed example mirrors service.spec.SEED_EXAMPLE, the
// 3-layer network of the teaching article.

export const EXAMPLES = [
  {
    id: "seed",
    label: "Seed article MLP (synthetic regression)",
    spec: {
      name: "seed-mlp",
      model: {
        layers: [
          { type: "Linear", in_features: 32, out_features: 64 },
          { type: "ReLU" },
          { type: "Linear", out_features: 32 },
          { type: "ReLU" },
          { type: "Linear", out_features: 1 },
        ],
      },
      loss: { type: "MSELoss" },
      optimizer: { type: "Adam", lr: 0.001 },
      training: { epochs: 100, batch_size: 128, seed: 0, log_every_steps: 1 },
      data: { source: "synthetic", kind: "randn", n_samples: 128, n_features: 32, n_targets: 1 },
    },
  },
  {
    id: "iris",
    label: "Iris classifier (builtin data set)",
    spec: {
      name: "iris-classifier",
      model: {
        layers: [
          { type: "Linear", in_features: 4, out_features: 16 },
          { type: "ReLU" },
          { type: "Linear", out_features: 3 },
        ],
      },
      loss: { type: "CrossEntropyLoss" },
      optimizer: { type: "Adam", lr: 0.01 },
      training: { epochs: 100, batch_size: 16, seed: 0, validation_split: 0.2, normalize: true },
      data: { source: "builtin", name: "iris" },
    },
  },
  {
    id: "diabetes",
    label: "Diabetes regressor (builtin data set)",
    spec: {
      name: "diabetes-regressor",
      model: {
        layers: [
          { type: "Linear", in_features: 10, out_features: 32 },
          { type: "ReLU" },
          { type: "Dropout", p: 0.1 },
          { type: "Linear", out_features: 1 },
        ],
      },
      loss: { type: "MSELoss" },
      optimizer: { type: "AdamW", lr: 0.003 },
      scheduler: { type: "CosineAnnealingLR" },
      training: { epochs: 200, batch_size: 32, seed: 0, validation_split: 0.2, normalize: true },
      data: { source: "builtin", name: "diabetes" },
    },
  },
];
