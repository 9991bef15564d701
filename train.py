"""Train a restoration network: `python train.py -opt options/nafnet_ddr.yml [--set key=value] [--auto_resume]`."""
from ddr_restore.train.entry import main

if __name__ == "__main__":
    main()
