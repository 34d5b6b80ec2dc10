"""Image generators on the scikit-learn digits: diffusion (DDPM/DDIM with classifier-free
guidance), a class-conditional DCGAN and a conditional VAE, plus the evaluation that
scores them (a digit classifier's accuracy and Frechet distance).

    python -m engine train diffusion configs/vision/diffusion.yaml [--resume] [--out DIR]
    python -m engine sample --checkpoint var/runs/vision-diffusion --prompt "a handwritten 7" \\
        --n 16 --out grid.png [--steps 50 --guidance-scale 2]

Modules: ``data`` (digits, split, prompts), ``unet`` + ``diffusion`` (network, forward
process, samplers), ``gan``, ``vae``, ``recipes`` (networks + objective + optimizers),
``train`` (the loop, checkpoints, grids), ``evaluate`` (classifier, Frechet distance),
``cli``. See docs/engine-vision.md.
"""
